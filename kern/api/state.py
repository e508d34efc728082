"""What every route of one API app shares: agents, control plane, dispatcher, event source."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from kern.agent import Agent
from kern.api.dispatch import Dispatcher
from kern.api.events import EventSource
from kern.api.feeds import FeedHub
from kern.api.settings import ApiSettings
from kern.control.base import ControlPlane, RunRecord
from kern.exceptions import ConfigError, UnknownAgent

log = logging.getLogger("kern.api")


@dataclass
class ApiState:
    """The app's shared objects (``app.state.kern``)."""

    agents: dict[str, Agent]
    control: ControlPlane
    settings: ApiSettings
    hub: FeedHub
    dispatcher: Dispatcher
    events: EventSource
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def agent(self, agent_id: str) -> Agent:
        """The agent served under ``agent_id``; `UnknownAgent` (404) otherwise."""
        agent = self.agents.get(agent_id)
        if agent is None:
            known = ", ".join(sorted(self.agents)) or "none"
            raise UnknownAgent(f"no agent {agent_id!r} here (agents: {known})")
        return agent

    async def run_of(self, agent: Agent, run_id: str) -> RunRecord | None:
        """The stored run ``run_id`` if it belongs to ``agent``."""
        record = await self.control.aget(run_id)
        if record is None or record.agent_id != agent.id:
            return None
        return record

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run ``coro`` on its own, outside the request that asked (e.g. a client left)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(lambda t: self._done(t, what))

    def _done(self, task: asyncio.Task[Any], what: str) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed: %s", what, task.exception())

    async def aclose(self) -> None:
        await self.dispatcher.aclose()
        if self._background:
            await asyncio.wait(self._background)


def shared_control(agents: Sequence[Agent], control: ControlPlane | None) -> ControlPlane:
    """The one control plane of ``agents``: ``control`` (attached to them) or the one they use."""
    if not agents:
        raise ConfigError("the API needs at least one agent")
    if control is not None:
        for agent in agents:
            agent.attach(control)  # ConfigError if the agent uses another plane
        return control
    planes = {id(agent.control): agent.control for agent in agents}
    if len(planes) > 1:
        raise ConfigError("all agents served by one API must share one control plane")
    return next(iter(planes.values()))


def get_state(request: Request) -> ApiState:
    """FastAPI dependency: the state of the app serving ``request``."""
    state: ApiState = request.app.state.kern
    return state
