"""Live fan-out of the runs executing in this API process.

A run dispatched inline publishes each event to its `RunFeed` as it is emitted;
any number of HTTP clients read the feed from any position. Sequence numbers
are the positions in the feed (1, 2, 3 ...), which are the numbers the run's
recorder gives the same events in the control plane's log, because both see
every event once and in emit order. So a client can move from a feed here to
the log in another process (``Last-Event-ID``) without a gap or a duplicate.
"""

from __future__ import annotations

import asyncio

from kern.control.base import SeqEvent
from kern.run.agent import RunContentEvent, RunOutputEvent


class RunFeed:
    """The events of one local run so far, and a way to wait for more.

    Publishing is synchronous (the run's ``emit`` callback); readers live in
    the same event loop.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._events: list[RunOutputEvent] = []
        self._parts: list[str] = []
        self._changed: asyncio.Future[None] | None = None
        self.terminal = False  # the terminal event was published
        self.closed = False  # nothing more will be published

    def __len__(self) -> int:
        return len(self._events)

    @property
    def content(self) -> str:
        """The text streamed so far."""
        return "".join(self._parts)

    def publish(self, event: RunOutputEvent) -> None:
        """Add the next event (the run's ``emit``)."""
        self._events.append(event)
        if isinstance(event, RunContentEvent):
            self._parts.append(event.content)
        if event.is_terminal:
            self.terminal = True
        self._wake()

    def close(self) -> None:
        """The run's task is over: wake readers for the last time."""
        self.closed = True
        self._wake()

    def since(self, after: int) -> list[SeqEvent]:
        """Events numbered above ``after``."""
        start = max(after, 0)
        return [(start + n + 1, event) for n, event in enumerate(self._events[start:])]

    async def wait(self, after: int, within: float | None = None) -> bool:
        """Wait until there is an event above ``after`` or the feed closed; False after
        ``within`` seconds without either."""
        if len(self._events) > after or self.closed:
            return True
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        # asyncio.wait never cancels the shared future, whatever happens to this reader.
        done, _ = await asyncio.wait({self._changed}, timeout=within)
        return bool(done)

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)


class FeedHub:
    """The feeds of the runs executing here, by run id."""

    def __init__(self) -> None:
        self._feeds: dict[str, RunFeed] = {}

    def __len__(self) -> int:
        return len(self._feeds)

    def open(self, run_id: str) -> RunFeed:
        feed = self._feeds[run_id] = RunFeed(run_id)
        return feed

    def get(self, run_id: str) -> RunFeed | None:
        return self._feeds.get(run_id)

    def discard(self, feed: RunFeed) -> None:
        """Forget ``feed`` once its events are all in the log; its readers keep reading it."""
        if self._feeds.get(feed.run_id) is feed:
            del self._feeds[feed.run_id]
