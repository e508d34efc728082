"""The ``kern`` command line."""

from __future__ import annotations

import sys

import typer

from kern.cli.demo import demo

app = typer.Typer(
    name="kern",
    help="kern: agent runs that stream and can be cancelled from anywhere.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(demo)


@app.callback()
def _root() -> None:
    """kern: agent runs that stream and can be cancelled from anywhere."""


def main() -> None:
    """Entry point of the ``kern`` script."""
    sys.exit(app())
