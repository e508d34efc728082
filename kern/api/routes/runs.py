"""The run routes: start a run, cancel it, read it, follow its events."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

from kern.agent import Agent
from kern.api import sse
from kern.api.body import OPENAPI_BODY, read_run_create
from kern.api.errors import RunConflict
from kern.api.routes import error_responses
from kern.api.schemas import RunAccepted, RunView
from kern.api.settings import MAX_CANCEL_WAIT, MAX_EVENT_ID
from kern.api.state import ApiState, get_state
from kern.control.base import RunRecord
from kern.exceptions import RuntimeFailure
from kern.follow import terminal_from_record
from kern.ids import validate_run_id
from kern.run.agent import (
    RunCancelledEvent,
    RunCompletedEvent,
    RunErrorEvent,
    RunOutput,
    RunOutputEvent,
    TerminalEvent,
)
from kern.run.base import RunStatus
from kern.runner import RunRequest

REASON_CLIENT_DISCONNECTED = "client_disconnected"

router = APIRouter(tags=["runs"])

State = Annotated[ApiState, Depends(get_state)]
AgentId = Annotated[str, Path(description="The agent's id, as listed by GET /agents.")]
RunId = Annotated[str, Path(description="The run's id.")]

_SSE_DOC = (
    "Server-sent events: `id:` the event's sequence number in the run's log, "
    "`event:` its RunEvent value, `data:` its JSON; the first is RunStarted, the last "
    "the one terminal event (RunCompleted, RunCancelled or RunError)."
)


@router.post(
    "/agents/{agent_id}/runs",
    response_model=RunOutput,
    summary="Start a run",
    description=(
        "Start a run of the agent. `stream` (default true) answers with the run's events "
        "as SSE; `stream=false` waits and answers the RunOutput; `background=true` answers "
        "202 at once. The run goes on if a streaming client disconnects, unless the server "
        "runs with cancel_on_disconnect."
    ),
    responses={
        200: {
            "description": "The run's events (stream=true) or its output (stream=false).",
            "content": {sse.MEDIA_TYPE: {"schema": {"type": "string", "description": _SSE_DOC}}},
        },
        202: {"model": RunAccepted, "description": "Accepted (background=true)."},
        **error_responses(401, 404, 409, 413, 415, 503),
    },
    openapi_extra=OPENAPI_BODY,
)
async def create_run(agent_id: AgentId, request: Request, state: State) -> Response:
    agent = state.agent(agent_id)
    body = await read_run_create(request)
    run = agent.request(
        body.message,
        stream=True,  # the model streams even for stream=false: cancels land mid-answer
        run_id=body.run_id,
        session_id=body.session_id,
        user_id=body.user_id,
    )
    await state.dispatcher.submit(agent, run)
    if body.background:
        accepted = RunAccepted(run_id=run.run_id, agent_id=agent.id, status=RunStatus.pending)
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202)
    cancel = state.settings.cancel_on_disconnect
    if body.stream:
        return _event_stream(state, run.run_id, 0, cancel_on_disconnect=cancel)
    output = await _output(state, agent, run, request if cancel else None)
    return JSONResponse(output.model_dump(mode="json"))


@router.post(
    "/agents/{agent_id}/runs/{run_id}/cancel",
    response_model=RunView,
    summary="Cancel a run",
    description=(
        "Cancel a PENDING or RUNNING run. 200 with the run (CANCELLED), also when it was "
        "cancelled already; 409 when it finished otherwise. With `wait`, answer once the "
        "process executing the run has stopped and saved its content (at most `wait` s)."
    ),
    responses=error_responses(401, 404, 409, 503),
)
async def cancel_run(
    agent_id: AgentId,
    run_id: RunId,
    state: State,
    wait: Annotated[
        float, Query(ge=0, le=MAX_CANCEL_WAIT, description="Seconds to wait for the stop.")
    ] = 0.0,
) -> RunView:
    agent = state.agent(agent_id)
    validate_run_id(run_id)
    result = await state.control.acancel(run_id, agent_id=agent.id)
    record = result.record
    if record is None:
        raise _no_run(agent, run_id)
    if record.status != RunStatus.cancelled:
        raise RunConflict(run_id, record.status)
    if wait > 0:
        record = await state.events.wait_stopped(run_id, wait) or record
    return await _view(state, record)


@router.get(
    "/agents/{agent_id}/runs/{run_id}",
    response_model=RunView,
    summary="Read a run",
    description="Status, timestamps, owner, error, and the content streamed so far.",
    responses=error_responses(401, 404, 503),
)
async def get_run(agent_id: AgentId, run_id: RunId, state: State) -> RunView:
    agent = state.agent(agent_id)
    validate_run_id(run_id)
    record = await state.run_of(agent, run_id)
    if record is None:
        raise _no_run(agent, run_id)
    return await _view(state, record)


@router.get(
    "/agents/{agent_id}/runs/{run_id}/events",
    summary="Follow a run's events",
    description=(
        "Replay the run's events, then follow them until the terminal one. Resume after a "
        "given event with the `Last-Event-ID` header (or the `last_event_id` parameter)."
    ),
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The run's events.",
            "content": {sse.MEDIA_TYPE: {"schema": {"type": "string", "description": _SSE_DOC}}},
        },
        **error_responses(401, 404, 503),
    },
)
async def run_events(
    agent_id: AgentId,
    run_id: RunId,
    state: State,
    last_event_id: Annotated[
        int | None,
        Query(ge=0, le=MAX_EVENT_ID, description="Resume after this event (as Last-Event-ID)."),
    ] = None,
    last_event_id_header: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, le=MAX_EVENT_ID, include_in_schema=False),
    ] = None,
) -> StreamingResponse:
    agent = state.agent(agent_id)
    validate_run_id(run_id)
    if await state.run_of(agent, run_id) is None:
        raise _no_run(agent, run_id)
    after = last_event_id_header if last_event_id_header is not None else last_event_id
    return _event_stream(state, run_id, after or 0, cancel_on_disconnect=False)


def _event_stream(
    state: ApiState, run_id: str, after: int, *, cancel_on_disconnect: bool
) -> StreamingResponse:
    def on_end(finished: bool) -> None:
        if not finished and cancel_on_disconnect:
            state.spawn(
                state.control.acancel(run_id, reason=REASON_CLIENT_DISCONNECTED),
                f"cancel of run {run_id}",
            )

    body = sse.sse_body(state.events.follow(run_id, after), on_end)
    headers = {**sse.HEADERS, "X-Run-Id": run_id}
    return StreamingResponse(body, media_type=sse.MEDIA_TYPE, headers=headers)


async def _output(
    state: ApiState, agent: Agent, run: RunRequest, request: Request | None
) -> RunOutput:
    """Wait for the run's end; with ``request``, a client that leaves cancels the run."""
    collecting = asyncio.ensure_future(_collect(state, run.run_id))
    if request is not None:
        watching = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
        if not collecting.done():
            await state.control.acancel(run.run_id, reason=REASON_CLIENT_DISCONNECTED)
        watching.cancel()
    try:
        events = await collecting
    finally:
        collecting.cancel()
    last = events[-1] if events else None
    final: TerminalEvent | None = None
    if isinstance(last, RunCompletedEvent | RunCancelledEvent | RunErrorEvent):
        final = last
    if final is None:  # the stream ended without its terminal event: ask the record
        record = await state.control.aget(run.run_id)
        if record is None:
            raise RuntimeFailure(f"run {run.run_id} vanished before it ended")
        final = terminal_from_record(record)
    return RunOutput.from_events(events, final, user_id=run.user_id, model=agent.model.id)


async def _collect(state: ApiState, run_id: str) -> list[RunOutputEvent]:
    return [event async for batch in state.events.follow(run_id) for _, event in batch]


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _view(state: ApiState, record: RunRecord) -> RunView:
    return RunView.from_record(record, content=await state.events.content(record))


def _no_run(agent: Agent, run_id: str) -> HTTPException:
    return HTTPException(404, f"no run {run_id!r} of agent {agent.id!r}")
