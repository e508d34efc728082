"""The run loop, written once (async); every way of running an agent comes here.

    create record (PENDING) -> start (RUNNING) -> RunStarted
      -> model stream -> RunContent ... -> tool calls -> model again ...
      -> finish (compare-and-set) -> exactly one terminal event

A cancel reaches a run through its `RunHandle`: a local flag read once per
chunk (no I/O) and a cancel of the run's task, which wakes whatever the run
awaits. The terminal event reports the status the control plane stored, so
when a cancel races completion both sides agree on the winner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from kern.context import RunCancelled, RunContext, RunHandle
from kern.control.base import RunRecord
from kern.exceptions import KernError, ModelError, RunNotStarted
from kern.models.base import Message, Model, ModelDelta, TextDelta, ToolCall, ToolSpec
from kern.run.agent import (
    Metrics,
    RunCancelledEvent,
    RunCompletedEvent,
    RunContentEvent,
    RunErrorEvent,
    RunOutputEvent,
    RunStartedEvent,
    TerminalEvent,
    ToolCallCompletedEvent,
    ToolCallStartedEvent,
    ToolExecution,
)
from kern.run.base import RunStatus

if TYPE_CHECKING:
    from kern.agent import Agent

T = TypeVar("T")
Emit = Callable[[RunOutputEvent], None]

REASON_CALLER_CANCELLED = "caller_cancelled"

log = logging.getLogger("kern.runner")


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One run to execute: who, what, and whether the model streams."""

    run_id: str
    input: str
    session_id: str | None = None
    user_id: str | None = None
    stream: bool = True

    def record(self, agent_id: str) -> RunRecord:
        """The PENDING record that stores this run."""
        return RunRecord(
            run_id=self.run_id,
            agent_id=agent_id,
            session_id=self.session_id,
            user_id=self.user_id,
            input=self.input,
        )


@dataclass(slots=True)
class _Progress:
    parts: list[str] = field(default_factory=list)
    tools: list[ToolExecution] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    started: float = field(default_factory=time.monotonic)

    @property
    def content(self) -> str:
        return "".join(self.parts)


async def execute_run(
    agent: Agent,
    request: RunRequest,
    emit: Emit,
    *,
    create: bool = True,
    record_events: bool = False,
) -> TerminalEvent:
    """Execute one run of ``agent``, sending every event to ``emit``.

    ``create=False`` runs a record that already exists (a queued run).
    ``record_events=True`` also appends the events to the run's log in the
    control plane, in batches, so other processes can follow or replay it.
    Raises before any event only for a bad request (`RunIdInUse`, `InvalidRunId`).
    A cancel of the calling task (from outside kern) ends the run CANCELLED,
    stored and emitted like any other, and is then raised again.
    """
    control = agent.control
    recorder = _Recorder(agent, request.run_id, emit) if record_events else None
    if recorder is not None:
        emit = recorder.emit
    handle = RunHandle(request.run_id, agent.id, asyncio.get_running_loop(), asyncio.current_task())
    # Tracked before the run is stored, so a cancel that follows at once finds it.
    control.local.add(handle)
    try:
        started = await _begin(agent, request, handle, create)
        stored = None
        if started is None:  # ended while it waited, or another process holds it
            stored = await _settle(handle, control.aget(request.run_id))
            if stored is None or not stored.is_terminal:
                raise RunNotStarted(f"run {request.run_id} is not PENDING: not started here")
        progress = _Progress()
        emit(_started(agent, request))
        if stored is not None:  # it ended without running: say so, change nothing
            final = _terminal(agent, request, stored, progress)
        else:
            status, error, reason = await _run_body(agent, request, handle, progress, emit)
            handle.closing = True  # a late interrupt must not cut the saving short
            ending = _finish(agent, request, progress, status, error, reason)
            final = await _settle(handle, ending)
        emit(final)
        if recorder is not None:
            await _settle(handle, recorder.flush())
    finally:
        control.local.remove(handle)
    if handle.outside_cancelled:
        raise asyncio.CancelledError
    return final


async def _begin(
    agent: Agent, request: RunRequest, handle: RunHandle, create: bool
) -> RunRecord | None:
    """Store (or take) the run as RUNNING here; None if it may not run here."""
    control = agent.control
    if not create:
        return await _settle(handle, control.astart(request.run_id))
    begun = await _settle(handle, control.abegin(request.record(agent.id)))
    # Cancelled between the two halves of a two-step begin: it is over already.
    return begun if begun.status == RunStatus.running else None


async def _run_body(
    agent: Agent, request: RunRequest, handle: RunHandle, progress: _Progress, emit: Emit
) -> tuple[RunStatus, str | None, str | None]:
    """Drive the run; return how it ended: (status, error, cancel reason)."""
    try:
        if handle.cancel_requested or handle.outside_cancelled:
            raise RunCancelled("cancelled before it started")
        await _drive(agent, request, handle, progress, emit)
    except asyncio.CancelledError:
        if not handle.consume_own_cancel():
            handle.outside_cancelled = True
    except RunCancelled:
        pass
    except Exception as exc:  # the run ends ERROR; the caller gets the event, not a raise
        return RunStatus.error, _describe(exc), None
    else:
        return RunStatus.completed, None, None
    reason = handle.reason or (REASON_CALLER_CANCELLED if handle.outside_cancelled else None)
    return RunStatus.cancelled, None, reason


async def _finish(
    agent: Agent,
    request: RunRequest,
    progress: _Progress,
    status: RunStatus,
    error: str | None,
    reason: str | None,
) -> TerminalEvent:
    """Store the end (compare-and-set) and build the terminal event from what was stored."""
    progress.metrics.duration = time.monotonic() - progress.started
    try:
        stored = await agent.control.afinish(
            request.run_id,
            status,
            content=progress.content,
            metrics=progress.metrics,
            error=error,
            reason=reason,
        )
    except Exception as exc:  # control plane down: still end the stream, content kept
        return RunErrorEvent(
            run_id=request.run_id,
            agent_id=agent.id,
            session_id=request.session_id,
            content=progress.content,
            metrics=progress.metrics,
            error=f"could not record the end of the run: {_describe(exc)}",
        )
    return _terminal(agent, request, stored, progress)


class _Recorder:
    """Numbers a run's events and records them in its log (batched by the control plane)."""

    def __init__(self, agent: Agent, run_id: str, emit: Emit) -> None:
        self._control = agent.control
        self._run_id = run_id
        self._emit = emit
        self._seq = 0

    def emit(self, event: RunOutputEvent) -> None:
        self._seq += 1
        self._control.record_event(self._run_id, (self._seq, event))
        self._emit(event)

    async def flush(self) -> None:
        """Wait until the log holds every event (called once the run has ended)."""
        try:
            await self._control.flush_events()
        except Exception as exc:  # the record keeps the content; followers end from it
            log.warning("run %s: events not all logged: %s", self._run_id, exc)


async def _settle(handle: RunHandle, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to the end, whatever cancels land on the run's task meanwhile.

    The run's own interrupts are consumed; a cancel from outside is noted on
    the handle (the run ends CANCELLED and raises it once it has stored its end).
    """
    future = asyncio.ensure_future(awaitable)
    while True:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not handle.consume_own_cancel():
                handle.outside_cancelled = True


async def _drive(
    agent: Agent, request: RunRequest, handle: RunHandle, progress: _Progress, emit: Emit
) -> None:
    messages = agent.build_messages(request.input)
    specs = [tool.spec for tool in agent.tools]
    ctx = RunContext(handle, request.session_id, request.user_id)
    for _ in range(agent.max_tool_rounds + 1):
        calls: list[ToolCall] = []
        round_start = len(progress.parts)
        progress.metrics.model_requests += 1
        async with contextlib.aclosing(
            _deltas(agent.model, messages, specs, request.stream)
        ) as deltas:
            async for delta in deltas:
                if handle.cancel_requested:  # the hot path: a local flag, no I/O
                    if handle.hold_interrupts():
                        # Take the pending task cancel here, where every stream is
                        # parked at a yield, not in the middle of closing them.
                        await asyncio.sleep(0)
                    raise RunCancelled(request.run_id)
                if isinstance(delta, TextDelta):
                    if not delta.text:
                        continue
                    if progress.metrics.time_to_first_token is None:
                        progress.metrics.time_to_first_token = time.monotonic() - progress.started
                    progress.parts.append(delta.text)
                    emit(
                        RunContentEvent(
                            run_id=request.run_id,
                            agent_id=agent.id,
                            session_id=request.session_id,
                            content=delta.text,
                        )
                    )
                elif isinstance(delta, ToolCall):
                    calls.append(delta)
                else:
                    progress.metrics.add_usage(delta.input_tokens, delta.output_tokens)
        if not calls:
            return
        text = "".join(progress.parts[round_start:])
        messages.append(Message("assistant", text, tool_calls=tuple(calls)))
        for call in calls:
            messages.append(await _call_tool(agent, request, call, ctx, progress, emit))
    raise ModelError(f"the model asked for tools more than {agent.max_tool_rounds} times")


async def _deltas(
    model: Model, messages: Sequence[Message], specs: Sequence[ToolSpec], stream: bool
) -> AsyncGenerator[ModelDelta, None]:
    if stream:
        deltas = model.stream(messages, specs)
        try:
            async for delta in deltas:
                yield delta
        finally:
            # Close the provider's stream now (not at garbage collection): this
            # is what closes the upstream HTTP response of a cancelled run.
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                await aclose()
    else:
        for delta in (await model.request(messages, specs)).deltas():
            yield delta


async def _call_tool(
    agent: Agent,
    request: RunRequest,
    call: ToolCall,
    ctx: RunContext,
    progress: _Progress,
    emit: Emit,
) -> Message:
    execution = ToolExecution(tool_call_id=call.call_id, tool_name=call.name)
    tool = agent.tool(call.name)
    try:
        execution.tool_args = json.loads(call.arguments or "{}")
    except ValueError:
        execution.tool_args = {"_raw": call.arguments}
    emit(
        ToolCallStartedEvent(
            run_id=request.run_id,
            agent_id=agent.id,
            session_id=request.session_id,
            tool=execution.model_copy(),
        )
    )
    if tool is None:
        execution.error = f"unknown tool {call.name!r}"
    else:
        try:
            execution.result = await tool.invoke(call.arguments, ctx)
        except RunCancelled:
            raise
        except Exception as exc:  # told to the model, which may recover
            execution.error = _describe(exc)
    progress.tools.append(execution)
    emit(
        ToolCallCompletedEvent(
            run_id=request.run_id,
            agent_id=agent.id,
            session_id=request.session_id,
            tool=execution.model_copy(),
        )
    )
    result = execution.result if execution.error is None else f"Error: {execution.error}"
    return Message("tool", result or "", tool_call_id=call.call_id, name=call.name)


def _started(agent: Agent, request: RunRequest) -> RunStartedEvent:
    return RunStartedEvent(
        run_id=request.run_id,
        agent_id=agent.id,
        session_id=request.session_id,
        model=agent.model.id,
    )


def _terminal(
    agent: Agent, request: RunRequest, stored: RunRecord, progress: _Progress
) -> TerminalEvent:
    common = {
        "run_id": request.run_id,
        "agent_id": agent.id,
        "session_id": request.session_id,
        "content": progress.content,
        "metrics": progress.metrics,
    }
    if stored.status == RunStatus.completed:
        return RunCompletedEvent.model_validate(common)
    if stored.status == RunStatus.cancelled:
        return RunCancelledEvent.model_validate({**common, "reason": stored.cancel_reason})
    return RunErrorEvent.model_validate({**common, "error": stored.error or "run failed"})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KernError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
