"""Helpers for the HTTP API tests: a real uvicorn server on loopback, agents, SSE reading."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import FastAPI

from kern.agent import Agent
from kern.api import create_app
from kern.api.settings import ApiSettings
from kern.api.sse import aiter_sse
from kern.control.memory import MemoryControlPlane
from kern.models.offline import OfflineModel
from kern.run.agent import RunOutputEvent, event_from_json
from kern.run.base import RunStatus

SHORT_TEXT = "The quick brown fox jumps over the lazy dog."


class LiveServer:
    """A uvicorn server for ``app`` on a free loopback port, in a thread of this process."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so,
        # and without it each keep-alive request waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@dataclass
class Stack:
    """A served app: its agents, control plane and URL."""

    server: LiveServer
    control: MemoryControlPlane
    agents: dict[str, Agent] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url


def make_agents(control: MemoryControlPlane) -> list[Agent]:
    """``slow`` streams for ~20 s, ``fast`` ends at once, ``quiet`` waits before its first token."""
    return [
        Agent(
            name="slow", model=OfflineModel(chunk_delay=0.01, id="offline-slow"), control=control
        ),
        Agent(name="fast", model=OfflineModel(SHORT_TEXT, id="offline-fast"), control=control),
        Agent(
            name="quiet",
            model=OfflineModel(SHORT_TEXT, first_token_delay=30, id="offline-quiet"),
            control=control,
        ),
    ]


@contextlib.contextmanager
def serve(
    agents: Sequence[Agent] | None = None,
    *,
    settings: ApiSettings | None = None,
    control: MemoryControlPlane | None = None,
) -> Iterator[Stack]:
    """A live server for ``agents`` (default `make_agents`) on a fresh memory control plane."""
    plane = control if control is not None else MemoryControlPlane()
    chosen = list(agents) if agents is not None else make_agents(plane)
    app = create_app(chosen, control=plane, settings=settings or ApiSettings())
    with LiveServer(app) as server:
        yield Stack(server, plane, {a.id: a for a in chosen})


@dataclass(frozen=True)
class SeqMessage:
    id: int
    event: RunOutputEvent


async def read_events(response: httpx.Response) -> AsyncIterator[SeqMessage]:
    """The events of an SSE response, checking that ``event:`` matches the JSON."""
    async for message in aiter_sse(response.aiter_lines()):
        event = event_from_json(message.data)
        assert message.event == event.event.value
        assert message.id is not None
        yield SeqMessage(int(message.id), event)


async def collect(response: httpx.Response) -> list[SeqMessage]:
    return [m async for m in read_events(response)]


def check_contract(messages: Sequence[SeqMessage], *, first_id: int = 1) -> None:
    """Ids 1, 2, 3 ... without gaps, RunStarted first, exactly one terminal event, last."""
    assert [m.id for m in messages] == list(range(first_id, first_id + len(messages)))
    if first_id == 1:
        assert messages[0].event.event == "RunStarted"
    terminals = [m for m in messages if m.event.is_terminal]
    assert len(terminals) == 1
    assert messages[-1].event.is_terminal


async def wait_until(predicate: object, within: float = 5.0) -> None:
    """Poll ``predicate()`` (sync) until it is true."""
    assert callable(predicate)
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def status_of(control: MemoryControlPlane, run_id: str) -> RunStatus | None:
    record = control.get(run_id)
    return None if record is None else record.status


# `kern serve api_support:SERVED` (run from tests/) serves these, on that process's default plane.
SERVED = [
    Agent(name="slow", model=OfflineModel(chunk_delay=0.01, id="offline-slow")),
    Agent(name="fast", model=OfflineModel(SHORT_TEXT, id="offline-fast")),
]
