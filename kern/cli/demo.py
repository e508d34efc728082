"""``kern demo``: the cancellation example on the embedded default."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from kern.demo import run_demo
from kern.run.base import RunStatus


def demo(
    cancel_after: Annotated[
        float, typer.Option(help="Seconds of streaming before the run is cancelled.", min=0)
    ] = 3.0,
) -> None:
    """Stream a story, cancel it from another thread, and show what was kept."""
    typer.echo(f"Streaming a story; another thread cancels it after {cancel_after:g} s.\n")
    result = run_demo(cancel_after, sys.stdout)
    preview = result.content[:200] + ("..." if len(result.content) > 200 else "")
    typer.echo("\n\n" + "=" * 60)
    typer.echo(f"Status:          {result.status.value.lower() if result.status else 'unknown'}")
    typer.echo(f"Run ID:          {result.run_id}")
    typer.echo(f"cancel_run():    {result.cancel_returned}")
    typer.echo(f"Kept content:    {len(result.content)} characters")
    typer.echo(f"Content preview: {preview}")
    if result.status == RunStatus.cancelled:
        typer.echo("\nSUCCESS: Run was successfully cancelled!")
    else:
        typer.echo("\nThe run finished before the cancel arrived.")
        raise typer.Exit(1)
