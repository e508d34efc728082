"""``kern serve APP``: the HTTP API for the agents of ``APP`` (uvicorn)."""

from __future__ import annotations

import os
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from kern.api.app import create_app
from kern.api.settings import DEFAULT_PORT, ApiSettings
from kern.apps import ENV_APP, load_agents
from kern.control import ENV_REDIS_URL
from kern.exceptions import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

FACTORY = "kern.api.app:app_from_env"


class Dispatch(StrEnum):
    inline = "inline"
    queue = "queue"


def serve(
    app: Annotated[
        str, typer.Argument(help="The agents to serve: 'module:attribute' (an Agent or a list).")
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = DEFAULT_PORT,
    workers: Annotated[
        int, typer.Option(help="API processes; more than 1 needs KERN_REDIS_URL.", min=1)
    ] = 1,
    dispatch: Annotated[
        Dispatch, typer.Option(help="inline: runs execute in the API; queue: in `kern worker`s.")
    ] = Dispatch.inline,
    cancel_on_disconnect: Annotated[
        bool,
        typer.Option(
            "--cancel-on-disconnect",
            help="Cancel a streaming run when its client disconnects (default: it goes on).",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the HTTP API for the agents of APP."""
    try:
        settings = ApiSettings.from_env().model_copy(
            update={"dispatch": dispatch.value, "cancel_on_disconnect": cancel_on_disconnect}
        )
        agents = load_agents(app)
        if workers > 1 and not os.environ.get(ENV_REDIS_URL):
            raise ConfigError(
                f"--workers {workers} needs the Redis control plane: set {ENV_REDIS_URL} so a "
                "cancel that reaches one API process stops a run executing in another"
            )
        # Built here even for several workers: a bad setup fails now, with exit code 2.
        asgi_app = create_app(agents, settings=settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _run_uvicorn(
        asgi_app, app, settings, host=host, port=port, workers=workers, log_level=log_level
    )


def _run_uvicorn(
    asgi_app: FastAPI,
    spec: str,
    settings: ApiSettings,
    *,
    host: str,
    port: int,
    workers: int,
    log_level: str,
) -> None:
    import uvicorn

    # Open SSE streams would hold a stopping server forever: give them this long.
    grace = max(int(settings.shutdown_grace), 1)
    if workers == 1:
        uvicorn.run(
            asgi_app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace
        )
        return
    # Each worker process builds its own app from the environment.
    os.environ.update(settings.to_env())
    os.environ[ENV_APP] = spec
    uvicorn.run(
        FACTORY,
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=grace,
    )
