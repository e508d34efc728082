"""Follow a run from any process: replay its event log, then wait for what comes next.

The log is what the owner appended; the run record is the truth. When the
record has ended but its log never will (a run cancelled while it waited in
the queue, or one whose worker died), the follower ends the stream itself
with the event the record implies, so every reader sees one terminal event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kern.control.base import ControlPlane, RunRecord, SeqEvent
from kern.run.agent import (
    RunCancelledEvent,
    RunCompletedEvent,
    RunErrorEvent,
    RunOutputEvent,
    RunStartedEvent,
)
from kern.run.base import RunStatus

POLL_SECONDS = 1.0
"""How long one wait on the log lasts before the record is checked again."""


async def follow(
    control: ControlPlane, run_id: str, after: int = 0, poll: float = POLL_SECONDS
) -> AsyncIterator[SeqEvent]:
    """Events of ``run_id`` numbered above ``after``, ending with its terminal event.

    Ends at once (yielding nothing) for an unknown run.
    """
    while True:
        batch = await control.aread_events(run_id, after, timeout=poll)
        if not batch:
            record = await control.aget(run_id)
            if record is None:
                return
            if not (record.is_terminal and record.stopped):
                continue
            # The owner may have appended its last events just now.
            batch = await control.aread_events(run_id, after, timeout=0)
            if not batch:
                for item in implied_events(record, after):
                    yield item
                return
        for seq, event in batch:
            yield seq, event
            after = seq
            if event.is_terminal:
                return


def implied_events(record: RunRecord, after: int) -> list[SeqEvent]:
    """The events a log that ends without a terminal event is missing."""
    events: list[RunOutputEvent] = []
    common: dict[str, Any] = {"run_id": record.run_id, "agent_id": record.agent_id, "session_id": record.session_id}
    if after == 0:
        events.append(RunStartedEvent.model_validate(common))
    ending: dict[str, Any] = {**common, "content": record.content, "metrics": record.metrics or {}}
    if record.status == RunStatus.completed:
        events.append(RunCompletedEvent.model_validate(ending))
    elif record.status == RunStatus.cancelled:
        events.append(RunCancelledEvent.model_validate({**ending, "reason": record.cancel_reason}))
    else:
        events.append(RunErrorEvent.model_validate({**ending, "error": record.error or "run failed"}))
    return [(after + n, event) for n, event in enumerate(events, start=1)]
