"""The ``kern`` command line."""

from __future__ import annotations

import sys

import typer

from kern.cli.client import run
from kern.cli.demo import demo
from kern.cli.runs import cancel, runs, status
from kern.cli.serve import serve
from kern.cli.worker import worker

app = typer.Typer(
    name="kern",
    help="kern: agent runs that stream and can be cancelled from anywhere.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(demo)
app.command()(cancel)
app.command()(status)
app.command()(runs)
app.command()(serve)
app.command()(run)
app.command()(worker)


@app.callback()
def _root() -> None:
    """kern: agent runs that stream and can be cancelled from anywhere."""


def main() -> None:
    """Entry point of the ``kern`` script."""
    sys.exit(app())
