"""`Agent`: a name, a model, instructions and tools; runs that can be cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Literal, overload

from kern import runtime
from kern.control import default_control_plane
from kern.control.base import ControlPlane
from kern.exceptions import ConfigError
from kern.ids import new_run_id, slugify, validate_run_id
from kern.models.base import Message, Model
from kern.run.agent import RunOutput, RunOutputEvent, TerminalEvent, ToolExecution
from kern.runner import RunRequest, execute_run
from kern.streams import AsyncRunStream, RunStream
from kern.tools import Tool, ToolFunction, as_tools


class Agent:
    """An agent whose runs stream events and can be cancelled from anywhere.

    ``control`` is where run state lives: by default the Redis control plane
    when ``KERN_REDIS_URL`` is set, else the in-process memory one.
    """

    def __init__(
        self,
        name: str = "Agent",
        model: Model | None = None,
        description: str | None = None,
        instructions: str | Sequence[str] | None = None,
        tools: Iterable[ToolFunction | Tool] = (),
        id: str | None = None,
        *,
        control: ControlPlane | None = None,
        max_tool_rounds: int = 10,
    ) -> None:
        if model is None:
            raise ConfigError(f"agent {name!r} needs a model, e.g. OpenAIResponses(id='gpt-5.2')")
        if not isinstance(model, Model):
            raise ConfigError(f"model must be a kern Model, got {type(model).__name__}")
        self.name = name
        self.id = id or slugify(name)
        self.model = model
        self.description = description
        self.instructions = (
            [instructions] if isinstance(instructions, str) else list(instructions or ())
        )
        self.tools = as_tools(tools)
        self._tools_by_name = {tool.name: tool for tool in self.tools}
        self.max_tool_rounds = max_tool_rounds
        self._control = control

    def __repr__(self) -> str:
        return f"Agent(id={self.id!r}, model={self.model.id!r})"

    @property
    def control(self) -> ControlPlane:
        if self._control is None:
            self._control = default_control_plane()
        return self._control

    def attach(self, control: ControlPlane) -> Agent:
        """Use ``control`` for this agent's runs (a server or worker hosting it)."""
        if self._control is not None and self._control is not control:
            raise ConfigError(f"agent {self.id!r} already uses another control plane")
        self._control = control
        return self

    def tool(self, name: str) -> Tool | None:
        return self._tools_by_name.get(name)

    def build_messages(self, input: str) -> list[Message]:
        system = "\n\n".join(p for p in (self.description, *self.instructions) if p)
        messages = [Message("system", system)] if system else []
        messages.append(Message("user", input))
        return messages

    def request(
        self,
        input: str,
        *,
        stream: bool,
        run_id: str | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> RunRequest:
        if not isinstance(input, str):
            raise ConfigError(f"input must be a str, got {type(input).__name__}")
        return RunRequest(
            run_id=validate_run_id(run_id) if run_id is not None else new_run_id(),
            input=input,
            session_id=session_id,
            user_id=user_id,
            stream=stream,
        )

    # -- running ---------------------------------------------------------------------

    @overload
    def run(
        self,
        input: str,
        *,
        stream: Literal[False] = False,
        run_id: str | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> RunOutput: ...

    @overload
    def run(
        self,
        input: str,
        *,
        stream: Literal[True],
        run_id: str | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> RunStream: ...

    def run(
        self,
        input: str,
        *,
        stream: bool = False,
        run_id: str | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> RunOutput | RunStream:
        """Run the agent. ``stream=True`` returns an iterator of events."""
        request = self.request(
            input, stream=stream, run_id=run_id, session_id=session_id, user_id=user_id
        )
        if stream:
            return RunStream(self, request)
        return runtime.call(self._collect(request))

    @overload
    def arun(
        self,
        input: str,
        *,
        stream: Literal[False] = False,
        run_id: str | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> asyncio.Future[RunOutput]: ...

    @overload
    def arun(
        self,
        input: str,
        *,
        stream: Literal[True],
        run_id: str | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> AsyncRunStream: ...

    def arun(
        self,
        input: str,
        *,
        stream: bool = False,
        run_id: str | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> asyncio.Future[RunOutput] | AsyncRunStream:
        """The async twin of `run`: an awaitable `RunOutput`, or an async iterator of events."""
        request = self.request(
            input, stream=stream, run_id=run_id, session_id=session_id, user_id=user_id
        )
        if stream:
            return AsyncRunStream(self, request)
        return asyncio.ensure_future(self._collect(request))

    async def _collect(self, request: RunRequest) -> RunOutput:
        events: list[RunOutputEvent] = []
        final: TerminalEvent = await execute_run(self, request, events.append)
        return RunOutput.from_events(events, final, user_id=request.user_id, model=self.model.id)

    # -- cancelling ------------------------------------------------------------------

    def cancel_run(self, run_id: str, reason: str = "cancelled") -> bool:
        """Cancel a PENDING or RUNNING run of this agent.

        True iff this call moved the run to CANCELLED; False for an unknown run,
        another agent's run, or one already finished. Safe from any thread.
        """
        return self.control.cancel(run_id, agent_id=self.id, reason=reason).won

    async def acancel_run(self, run_id: str, reason: str = "cancelled") -> bool:
        """The async twin of `cancel_run`."""
        return (await self.control.acancel(run_id, agent_id=self.id, reason=reason)).won


__all__ = ["Agent", "ToolExecution"]
