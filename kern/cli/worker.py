"""``kern worker APP``: execute the queued runs of APP's agents."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from kern.apps import load_agents
from kern.exceptions import KernError
from kern.worker import Worker


def worker(
    app: Annotated[
        str, typer.Argument(help="The agents to serve: 'module:attribute' (an Agent or a list).")
    ],
    concurrency: Annotated[
        int, typer.Option(help="Runs executed at once by this process.", min=1)
    ] = 256,
    shutdown_grace: Annotated[
        float,
        typer.Option(help="Seconds in-flight runs get on SIGTERM before a cancel.", min=0),
    ] = 30.0,
    claim_after: Annotated[
        float,
        typer.Option(help="Seconds before a dead worker's unacknowledged runs are claimed.", min=0),
    ] = 30.0,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Serve APP's agents from the Redis run queue (KERN_REDIS_URL) until SIGTERM."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        served = Worker(
            load_agents(app),
            concurrency=concurrency,
            shutdown_grace=shutdown_grace,
            claim_after=claim_after,
        )
    except KernError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        asyncio.run(served.serve())
    except KernError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        served.control.close()
