"""The app factory: `create_app(agents)` builds the FastAPI app ``kern serve`` runs.

    create_app(agents, control=None, security_key=None, dispatch="inline", ...)
      -> FastAPI app with
         /agents/{agent_id}/runs (POST) ... /cancel, /{run_id}, /{run_id}/events
         /agents, /health
      state: the agents' control plane, a dispatcher, the local event feeds

`app_from_env` is the same app for ``uvicorn --factory`` (``kern serve
--workers N``): each worker process loads ``KERN_APP`` and the settings from
the environment.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, params
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

import kern
from kern.agent import Agent
from kern.api.auth import require_key
from kern.api.dispatch import make_dispatcher
from kern.api.errors import install_error_handlers
from kern.api.events import EventSource
from kern.api.feeds import FeedHub
from kern.api.limits import BodyLimit
from kern.api.routes import agents as agent_routes
from kern.api.routes import health as health_routes
from kern.api.routes import runs as run_routes
from kern.api.settings import ApiSettings, DispatchKind
from kern.api.state import ApiState, shared_control
from kern.apps import ENV_APP, load_agents
from kern.control.base import ControlPlane
from kern.exceptions import ConfigError

TITLE = "kern"
DESCRIPTION = "Agent runs that stream and can be cancelled from anywhere."


def create_app(
    agents: Sequence[Agent],
    *,
    control: ControlPlane | None = None,
    security_key: str | None = None,
    dispatch: DispatchKind | None = None,
    cancel_on_disconnect: bool | None = None,
    settings: ApiSettings | None = None,
) -> FastAPI:
    """The HTTP API serving ``agents``.

    ``settings`` default to `ApiSettings.from_env` (``KERN_SECURITY_KEY`` ...);
    the other keyword arguments override them. ``control`` defaults to the
    agents' control plane, which they must share. Raises `ConfigError` for a
    bad setup (no agents, duplicate ids, ``dispatch="queue"`` for now).
    """
    base = settings or ApiSettings.from_env()
    overrides = {
        "security_key": security_key,
        "dispatch": dispatch,
        "cancel_on_disconnect": cancel_on_disconnect,
    }
    settings = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    state = _build_state(agents, control, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await state.aclose()

    gated = settings.security_key is not None
    app = FastAPI(
        title=TITLE,
        description=DESCRIPTION,
        version=kern.__version__,
        lifespan=lifespan,
        openapi_url=None if gated else "/openapi.json",
        docs_url=None if gated else "/docs",
        redoc_url=None,
    )
    app.state.kern = state
    auth: list[params.Depends] = (
        [require_key(settings.security_key)] if settings.security_key else []
    )
    app.include_router(run_routes.router, dependencies=auth)
    app.include_router(agent_routes.router, dependencies=auth)
    app.include_router(health_routes.router)
    if gated:
        _add_gated_docs(app, auth)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def app_from_env() -> FastAPI:
    """`create_app` for the agents of ``KERN_APP``, with settings from the environment."""
    spec = os.environ.get(ENV_APP)
    if not spec:
        raise ConfigError(f"{ENV_APP} must name the app to serve, as 'module:attribute'")
    return create_app(load_agents(spec), settings=ApiSettings.from_env())


def _build_state(
    agents: Sequence[Agent], control: ControlPlane | None, settings: ApiSettings
) -> ApiState:
    by_id: dict[str, Agent] = {}
    for agent in agents:
        if agent.id in by_id:
            raise ConfigError(f"two agents have the id {agent.id!r}")
        by_id[agent.id] = agent
    plane = shared_control(agents, control)
    hub = FeedHub()
    dispatcher = make_dispatcher(
        settings.dispatch, hub, plane, shutdown_grace=settings.shutdown_grace
    )
    events = EventSource(
        plane,
        hub,
        idle=settings.keepalive,
        poll=settings.follow_poll,
        end_grace=settings.end_grace,
    )
    return ApiState(by_id, plane, settings, hub, dispatcher, events)


def _add_gated_docs(app: FastAPI, auth: list[params.Depends]) -> None:
    """The schema and docs behind the key too: every route but /health needs it."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=auth)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{TITLE} docs")
