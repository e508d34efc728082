"""Server-sent events: how run events are written to HTTP, and read back by clients.

Each event is one SSE message::

    id: 7
    event: RunContent
    data: {"event":"RunContent","run_id":"...","content":" dragon",...}

``id`` is the event's sequence number in the run's log, so a client that lost
its connection resumes with ``Last-Event-ID``. A comment line (``: keepalive``)
is sent after a quiet spell so proxies keep the connection open.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass

from kern.control.base import SeqEvent
from kern.run.agent import RunOutputEvent

MEDIA_TYPE = "text/event-stream"
KEEPALIVE = ": keepalive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def encode(seq: int, event: RunOutputEvent) -> str:
    """One event as an SSE message (its JSON holds no raw newline)."""
    return f"id: {seq}\nevent: {event.event.value}\ndata: {event.to_json()}\n\n"


async def sse_body(
    batches: AsyncGenerator[list[SeqEvent], None], on_end: Callable[[bool], None] | None = None
) -> AsyncIterator[str]:
    """The response body for ``batches`` (see `EventSource.follow`).

    ``on_end(finished)`` is called however the body stops: ``finished`` is
    False when it stopped before the terminal event (the client went away).
    """
    finished = False
    try:
        async with contextlib.aclosing(batches):
            async for batch in batches:
                if not batch:
                    yield KEEPALIVE
                    continue
                finished = batch[-1][1].is_terminal
                yield "".join(encode(seq, event) for seq, event in batch)
    finally:
        if on_end is not None:
            on_end(finished)


@dataclass(frozen=True, slots=True)
class SseMessage:
    """One message read from an SSE stream."""

    data: str
    event: str | None = None
    id: str | None = None


class SseParser:
    """Turns the lines of an SSE stream into messages (comments and retries ignored)."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, line: str) -> SseMessage | None:
        """Take one line (without its end of line); a message when ``line`` ends one."""
        if not line:
            if not self._data and self._event is None:
                return None
            message = SseMessage("\n".join(self._data), self._event, self._id)
            self._data, self._event, self._id = [], None, None
            return message
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            self._id = value
        return None


def iter_sse(lines: Iterable[str]) -> Iterator[SseMessage]:
    """The messages in ``lines`` (e.g. ``httpx.Response.iter_lines()``)."""
    parser = SseParser()
    for line in lines:
        message = parser.feed(line)
        if message is not None:
            yield message


async def aiter_sse(lines: AsyncIterator[str]) -> AsyncIterator[SseMessage]:
    """The async twin of `iter_sse` (e.g. ``httpx.Response.aiter_lines()``)."""
    parser = SseParser()
    async for line in lines:
        message = parser.feed(line)
        if message is not None:
            yield message
