"""Iterators over a run's events: `RunStream` for threads, `AsyncRunStream` for asyncio.

Both start the run on first use, like a generator. Closing one before the run
ended (``break`` out of the loop, ``close()``, or dropping it) cancels the run
with reason ``consumer_closed``, so no run is left streaming for nobody.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Final

from kern import runtime
from kern.run.agent import RunOutputEvent, TerminalEvent
from kern.runner import RunRequest, execute_run

if TYPE_CHECKING:
    from kern.agent import Agent

REASON_CONSUMER_CLOSED: Final = "consumer_closed"


class _End:
    """Put on the queue when the run's task is done, whatever happened."""


_END: Final = _End()


class RunStream(Iterator[RunOutputEvent]):
    """The events of one run, for a plain thread. The run executes on kern's loop."""

    def __init__(self, agent: Agent, request: RunRequest) -> None:
        self.agent = agent
        self.request = request
        self.run_id = request.run_id
        self._queue: queue.SimpleQueue[RunOutputEvent | _End] = queue.SimpleQueue()
        self._future: concurrent.futures.Future[TerminalEvent] | None = None
        self._finished = False

    def __iter__(self) -> RunStream:
        return self

    def __next__(self) -> RunOutputEvent:
        if self._finished:
            raise StopIteration
        if self._future is None:
            # Nothing the run holds may point back at this stream: dropping the
            # stream is what cancels a run nobody reads any more.
            events = self._queue
            self._future = runtime.submit(execute_run(self.agent, self.request, events.put))
            self._future.add_done_callback(lambda _: events.put(_END))
        item = self._queue.get()
        if isinstance(item, _End):
            self._finished = True
            self._future.result()  # raises what stopped the run before its first event
            raise StopIteration
        if item.is_terminal:
            self._finished = True
        return item

    def close(self) -> None:
        """Stop reading; a run still going is cancelled."""
        if self._future is not None and not self._finished:
            self._finished = True
            self.agent.control.local.interrupt(self.run_id, REASON_CONSUMER_CLOSED)

    def __del__(self) -> None:
        self.close()


class AsyncRunStream(AsyncIterator[RunOutputEvent]):
    """The events of one run, for asyncio. The run executes in the caller's loop."""

    def __init__(self, agent: Agent, request: RunRequest) -> None:
        self.agent = agent
        self.request = request
        self.run_id = request.run_id
        self._queue: asyncio.Queue[RunOutputEvent | _End] = asyncio.Queue()
        self._task: asyncio.Task[TerminalEvent] | None = None
        self._finished = False

    def __aiter__(self) -> AsyncRunStream:
        return self

    async def __anext__(self) -> RunOutputEvent:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            events = self._queue  # as in RunStream: no reference back to the stream
            self._task = asyncio.ensure_future(
                execute_run(self.agent, self.request, events.put_nowait)
            )
            self._task.add_done_callback(lambda _: events.put_nowait(_END))
        item = await self._queue.get()
        if isinstance(item, _End):
            self._finished = True
            await self._task  # raises what stopped the run before its first event
            raise StopAsyncIteration
        if item.is_terminal:
            self._finished = True
        return item

    async def aclose(self) -> None:
        """Stop reading; a run still going is cancelled and awaited."""
        if self._task is not None and not self._finished:
            self._finished = True
            self.agent.control.local.interrupt(self.run_id, REASON_CONSUMER_CLOSED)
            await asyncio.wait([self._task])

    def __del__(self) -> None:
        if self._task is not None and not self._finished:
            self.agent.control.local.interrupt(self.run_id, REASON_CONSUMER_CLOSED)
