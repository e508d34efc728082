"""Reading a run's events: the live feed of a run executing here, else the control plane's log.

`EventSource.follow` yields batches of numbered events until the terminal one,
and an empty batch whenever ``idle`` seconds pass without one (the SSE layer
sends a keep-alive then). A run executing in another process is followed by
reading its log every ``poll`` seconds. When the owner died before writing its
terminal event (its run ends ERROR ``worker_lost``), the stream still ends:
once the stored run has stopped and ``end_grace`` seconds pass with no new
event, the terminal event is built from the stored record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator

from kern.api.feeds import FeedHub, RunFeed
from kern.control.base import ControlPlane, RunRecord, SeqEvent
from kern.follow import follow_log
from kern.run.agent import RunContentEvent


class EventSource:
    """Where the API reads events and content of any run it can see."""

    def __init__(
        self,
        control: ControlPlane,
        hub: FeedHub,
        *,
        idle: float = 15.0,
        poll: float = 0.05,
        end_grace: float = 1.0,
    ) -> None:
        self.control = control
        self.hub = hub
        self.idle = idle
        self.poll = poll
        self.end_grace = end_grace

    async def follow(self, run_id: str, after: int = 0) -> AsyncGenerator[list[SeqEvent], None]:
        """Batches of events numbered above ``after``, ending with the terminal event."""
        feed = self.hub.get(run_id)
        if feed is not None:
            async with contextlib.aclosing(self._follow_feed(feed, after)) as batches:
                async for batch in batches:
                    yield batch
                    if batch:
                        after = batch[-1][0]
                        if batch[-1][1].is_terminal:
                            return
        # Not executing here, or its task ended without a terminal event.
        async with contextlib.aclosing(self._follow_log(run_id, after)) as batches:
            async for batch in batches:
                yield batch

    async def content(self, record: RunRecord) -> str:
        """The content of ``record``'s run so far: stored once stopped, else from its events."""
        if record.stopped:
            return record.content
        feed = self.hub.get(record.run_id)
        if feed is not None:
            return feed.content
        events = await self.control.aread_events(record.run_id, 0)
        return "".join(e.content for _, e in events if isinstance(e, RunContentEvent))

    async def wait_stopped(self, run_id: str, within: float) -> RunRecord | None:
        """The record once the owner has stopped the run (or as it is after ``within`` s)."""
        deadline = time.monotonic() + within
        feed = self.hub.get(run_id)
        if feed is not None and within > 0:
            while not feed.closed and (left := deadline - time.monotonic()) > 0:
                await feed.wait(len(feed), left)
        record = await self.control.aget(run_id)
        delay = 0.005
        while record is not None and not (record.is_terminal and record.stopped):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, self.poll)
            record = await self.control.aget(run_id)
        return record

    async def _follow_feed(self, feed: RunFeed, after: int) -> AsyncGenerator[list[SeqEvent], None]:
        while True:
            batch = feed.since(after)
            if batch:
                yield batch
                after = batch[-1][0]
                if batch[-1][1].is_terminal:
                    return
            elif feed.closed:
                return
            elif not await feed.wait(after, self.idle):
                yield []

    def _follow_log(self, run_id: str, after: int) -> AsyncGenerator[list[SeqEvent], None]:
        return follow_log(
            self.control, run_id, after, poll=self.poll, idle=self.idle, end_grace=self.end_grace
        )
