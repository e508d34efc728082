"""Follow a run from any process: replay its event log, then read what comes next.

The log is what the owner appended; the run record is the truth. When the
record has stopped but its log never will end (a run cancelled while it waited
in the queue, or one whose worker died), the follower ends the stream itself
with the events the record implies, so every reader sees one terminal event.
Used by the HTTP API (`kern.api.events`) and the Python client (`kern.client`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from kern.control.base import ControlPlane, RunRecord, SeqEvent
from kern.exceptions import ControlPlaneUnavailable
from kern.run.agent import (
    RunCancelledEvent,
    RunCompletedEvent,
    RunErrorEvent,
    RunOutputEvent,
    RunStartedEvent,
    TerminalEvent,
)
from kern.run.base import RunStatus

POLL = 0.05
"""Seconds between two reads of a log that had nothing new."""
IDLE = 15.0
"""Seconds without an event after which an empty batch is yielded (a keep-alive)."""
END_GRACE = 1.0
"""Seconds a stopped run's owner gets to append its last events before the record ends it."""


async def follow_log(
    control: ControlPlane,
    run_id: str,
    after: int = 0,
    *,
    poll: float = POLL,
    idle: float = IDLE,
    end_grace: float = END_GRACE,
) -> AsyncGenerator[list[SeqEvent], None]:
    """Batches of events numbered above ``after``, the last ending with the terminal event.

    An empty batch now and then means "still waiting". Ends at once for an
    unknown (or expired) run. Survives the control plane going away for a while.
    """
    last_sent = time.monotonic()
    stopped_since: float | None = None
    while True:
        try:
            batch = await control.aread_events(run_id, after)
            if batch:
                stopped_since = None
                last_sent = time.monotonic()
                yield batch
                after = batch[-1][0]
                if batch[-1][1].is_terminal:
                    return
                continue
            record = await control.aget(run_id)
            if record is None:
                return  # expired meanwhile: nothing more will come
            if record.is_terminal and record.stopped:
                stopped_since = stopped_since or time.monotonic()
                end = await _end_from_record(control, record, after, stopped_since, end_grace)
                if end is not None:
                    if end:
                        yield end
                    return
        except ControlPlaneUnavailable:
            pass  # keep following; the next poll tries again
        if time.monotonic() - last_sent >= idle:
            last_sent = time.monotonic()
            yield []
        await asyncio.sleep(poll)


async def _end_from_record(
    control: ControlPlane, record: RunRecord, after: int, stopped_since: float, end_grace: float
) -> list[SeqEvent] | None:
    """How a stopped run's stream ends: [] if the reader has it all, the missing
    end, or None to wait a little longer."""
    log = await control.aread_events(record.run_id, 0)
    last_seq = log[-1][0] if log else 0
    if last_seq > after:
        return None  # the owner appended more meanwhile: the loop reads it next
    if (log and log[-1][1].is_terminal) or after > last_seq:
        return []  # the reader is at (or past) the end already
    if time.monotonic() - stopped_since < end_grace:
        return None  # the owner may still be appending its last events
    end: list[RunOutputEvent] = []
    if last_seq == 0 and after == 0:  # it never started: every stream opens with RunStarted
        end.append(
            RunStartedEvent(
                run_id=record.run_id, agent_id=record.agent_id, session_id=record.session_id
            )
        )
    end.append(terminal_from_record(record))
    return [(last_seq + n, event) for n, event in enumerate(end, start=1)]


def terminal_from_record(record: RunRecord) -> TerminalEvent:
    """The terminal event that matches a stopped run's stored record."""
    common: dict[str, object] = {
        "run_id": record.run_id,
        "agent_id": record.agent_id,
        "session_id": record.session_id,
        "content": record.content,
        "created_at": record.ended_at or time.time(),
    }
    if record.metrics is not None:
        common["metrics"] = record.metrics
    if record.status == RunStatus.completed:
        return RunCompletedEvent.model_validate(common)
    if record.status == RunStatus.cancelled:
        return RunCancelledEvent.model_validate({**common, "reason": record.cancel_reason})
    return RunErrorEvent.model_validate({**common, "error": record.error or "run failed"})
