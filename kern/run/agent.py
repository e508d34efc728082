"""Events a run streams, and the output it ends with.

Every event is a pydantic model tagged by its ``event`` field, so one
``TypeAdapter`` (`EVENT_ADAPTER`) moves it across threads, Redis and HTTP and
back into the same class.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from kern.run.base import RunStatus


class RunEvent(StrEnum):
    """The kinds of event in a run's stream (Agno-compatible values)."""

    run_started = "RunStarted"
    run_content = "RunContent"
    run_completed = "RunCompleted"
    run_cancelled = "RunCancelled"
    run_error = "RunError"
    tool_call_started = "ToolCallStarted"
    tool_call_completed = "ToolCallCompleted"


TERMINAL_EVENTS = frozenset({RunEvent.run_completed, RunEvent.run_cancelled, RunEvent.run_error})


class Metrics(BaseModel):
    """Token usage and timing of a run."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    model_requests: int = 0
    duration: float | None = None
    time_to_first_token: float | None = None

    def add_usage(self, input_tokens: int, output_tokens: int) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.total_tokens = self.input_tokens + self.output_tokens


class ToolExecution(BaseModel):
    """One call of a tool: what the model asked for and what it got."""

    tool_call_id: str
    tool_name: str
    tool_args: dict[str, Any] = Field(default_factory=dict)
    result: str | None = None
    error: str | None = None


class _BaseEvent(BaseModel):
    model_config = ConfigDict(use_enum_values=False, frozen=True)

    run_id: str
    agent_id: str
    session_id: str | None = None
    created_at: float = Field(default_factory=time.time)

    def to_json(self) -> str:
        return self.model_dump_json()

    @property
    def is_terminal(self) -> bool:
        return False


class RunStartedEvent(_BaseEvent):
    event: Literal[RunEvent.run_started] = RunEvent.run_started
    model: str | None = None


class RunContentEvent(_BaseEvent):
    event: Literal[RunEvent.run_content] = RunEvent.run_content
    content: str = Field(min_length=1)


class ToolCallStartedEvent(_BaseEvent):
    event: Literal[RunEvent.tool_call_started] = RunEvent.tool_call_started
    tool: ToolExecution


class ToolCallCompletedEvent(_BaseEvent):
    event: Literal[RunEvent.tool_call_completed] = RunEvent.tool_call_completed
    tool: ToolExecution


class _TerminalEvent(_BaseEvent):
    status: RunStatus
    content: str = ""
    metrics: Metrics = Field(default_factory=Metrics)

    @property
    def is_terminal(self) -> bool:
        return True


class RunCompletedEvent(_TerminalEvent):
    event: Literal[RunEvent.run_completed] = RunEvent.run_completed
    status: RunStatus = RunStatus.completed


class RunCancelledEvent(_TerminalEvent):
    event: Literal[RunEvent.run_cancelled] = RunEvent.run_cancelled
    status: RunStatus = RunStatus.cancelled
    reason: str | None = None


class RunErrorEvent(_TerminalEvent):
    event: Literal[RunEvent.run_error] = RunEvent.run_error
    status: RunStatus = RunStatus.error
    error: str = ""


TerminalEvent = RunCompletedEvent | RunCancelledEvent | RunErrorEvent

RunOutputEvent = Annotated[
    RunStartedEvent
    | RunContentEvent
    | ToolCallStartedEvent
    | ToolCallCompletedEvent
    | RunCompletedEvent
    | RunCancelledEvent
    | RunErrorEvent,
    Field(discriminator="event"),
]

EVENT_ADAPTER: TypeAdapter[RunOutputEvent] = TypeAdapter(RunOutputEvent)


def event_from_json(data: str | bytes) -> RunOutputEvent:
    """Parse an event serialised with ``event.to_json()``."""
    return EVENT_ADAPTER.validate_json(data)


class RunOutput(BaseModel):
    """The result of a run, returned by ``agent.run(stream=False)``."""

    run_id: str
    agent_id: str
    session_id: str | None = None
    user_id: str | None = None
    status: RunStatus
    content: str = ""
    model: str | None = None
    tools: list[ToolExecution] = Field(default_factory=list)
    metrics: Metrics = Field(default_factory=Metrics)
    error: str | None = None
    cancel_reason: str | None = None
    created_at: float = Field(default_factory=time.time)

    @property
    def is_cancelled(self) -> bool:
        return self.status == RunStatus.cancelled

    @classmethod
    def from_events(
        cls,
        events: list[RunOutputEvent],
        final: TerminalEvent,
        *,
        user_id: str | None = None,
        model: str | None = None,
    ) -> RunOutput:
        """The output of a run whose events were ``events``, ending with ``final``."""
        return cls(
            run_id=final.run_id,
            agent_id=final.agent_id,
            session_id=final.session_id,
            user_id=user_id,
            status=final.status,
            content=final.content,
            model=model,
            tools=[e.tool for e in events if isinstance(e, ToolCallCompletedEvent)],
            metrics=final.metrics,
            error=final.error if isinstance(final, RunErrorEvent) else None,
            cancel_reason=final.reason if isinstance(final, RunCancelledEvent) else None,
        )
