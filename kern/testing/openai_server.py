"""A local OpenAI-compatible server: the real wire format, scripted answers.

`LocalOpenAIServer` answers the Responses and Chat Completions APIs exactly as
api.openai.com sends them (SSE event names, ``sequence_number``, usage,
``data: [DONE]``), so the official ``openai`` SDK parses its streams. What it
says, and how fast, is a `ServerScript`: a text streamed a few words at a time,
an optional stall before the first byte, and tool calls to request first.

It counts what matters for cancellation tests: how many streams a client
abandoned (``disconnects``) and how many ran to the end. A disconnect is seen
within milliseconds, even while the stream is silent: every response races its
body against the client's ``http.disconnect``.

    with LocalOpenAIServer(ServerScript(first_token_delay=5)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="any")
        ...
        assert server.wait_for(lambda s: s.disconnects == 1)

Command line, for pointing ``OPENAI_BASE_URL`` at it::

    python -m kern.testing.openai_server --port 8000 --chunk-delay 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from types import TracebackType

import anyio
import uvicorn
from anyio.abc import TaskGroup
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kern.testing.script import ScriptedToolCall, ServerScript
from kern.testing.wire import (
    JSON,
    Event,
    chat_completion,
    chat_events,
    count_words,
    output_items,
    plan,
    response_events,
    response_object,
)

__all__ = ["LocalOpenAIServer", "ScriptedToolCall", "ServerScript"]


# --- delivery -----------------------------------------------------------------------


class _Counters:
    """The server's tallies, written by its loop thread and read by tests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.disconnects = self.completed_streams = self.active_streams = 0
        self.active_requests = 0  # answers (streamed or not) being sent right now


class _ScriptedResponse(StreamingResponse):
    """Sends a paced body while watching for the client to leave.

    Starlette's own `StreamingResponse` only races the body against
    ``http.disconnect`` for ASGI spec < 2.4; from 2.4 on it relies on ``send``
    failing, which never happens while the body is silent (a stall). So this
    class always races the two, whatever the server's spec version.
    """

    def __init__(
        self,
        events: Iterator[Event],
        script: ServerScript,
        counters: _Counters,
        *,
        stream: bool,
    ) -> None:
        self._body = self._paced(events, script, stream)
        self._counters = counters
        self._stream = stream
        media_type = "text/event-stream" if stream else "application/json"
        headers = {"cache-control": "no-cache"} if stream else None
        super().__init__(self._body, headers=headers, media_type=media_type)

    @staticmethod
    async def _paced(
        events: Iterator[Event], script: ServerScript, stream: bool
    ) -> AsyncGenerator[bytes, None]:
        await asyncio.sleep(script.first_token_delay)  # a stream's headers are out: it is silent
        if not stream:
            yield b"".join(frame for frame, _ in events)
            return
        first = True
        for frame, is_delta in events:
            if is_delta:
                # sleep(0) when unpaced still lets other streams and disconnects through
                await asyncio.sleep(0 if first else script.chunk_delay)
                first = False
            yield frame

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counters = self._counters
        finished = False

        async def deliver() -> None:
            nonlocal finished
            start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            if self._stream:  # an SSE stream opens at once; a plain answer comes in one piece
                await send(start)
            async for frame in self._body:
                if not self._stream:
                    await send(start)
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            finished = True  # everything scripted has been handed to the server
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def first_of(task: Callable[[], Awaitable[None]], group: TaskGroup) -> None:
            await task()
            group.cancel_scope.cancel()

        with counters.lock:
            counters.active_requests += 1
            counters.active_streams += int(self._stream)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(first_of, deliver, group)
                group.start_soon(first_of, lambda: self.listen_for_disconnect(receive), group)
        finally:
            await self._body.aclose()
            with counters.lock:
                counters.active_requests -= 1
                if self._stream:
                    counters.active_streams -= 1
                    counters.completed_streams += int(finished)
                counters.disconnects += int(not finished)


# --- the server ---------------------------------------------------------------------


class LocalOpenAIServer:
    """An OpenAI-compatible HTTP server on loopback, in a background thread.

    ``start()`` binds ``host:port`` (port 0 picks a free one) and returns once
    the server accepts connections; ``stop()`` shuts it down (streams still
    open are cut after a second). Any API key is accepted. Counters are
    thread-safe; ``script`` may be replaced or edited between requests.
    """

    def __init__(
        self, script: ServerScript | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.script = script if script is not None else ServerScript()
        self.host = host
        self.port = port
        self.last_request: JSON | None = None
        self._counters = _Counters()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    # counters ------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Model requests received (Responses and Chat)."""
        with self._counters.lock:
            return self._counters.requests

    @property
    def disconnects(self) -> int:
        """Answers the client abandoned before the server finished sending."""
        with self._counters.lock:
            return self._counters.disconnects

    @property
    def completed_streams(self) -> int:
        """Streams sent to the end."""
        with self._counters.lock:
            return self._counters.completed_streams

    @property
    def active_streams(self) -> int:
        """Streams open right now."""
        with self._counters.lock:
            return self._counters.active_streams

    @property
    def active_requests(self) -> int:
        """Answers (streamed or not) being sent right now."""
        with self._counters.lock:
            return self._counters.active_requests

    def reset_counters(self) -> None:
        """Zero the finished tallies and forget ``last_request``."""
        with self._counters.lock:
            self._counters.requests = self._counters.disconnects = 0
            self._counters.completed_streams = 0
        self.last_request = None

    def wait_for(self, predicate: Callable[[LocalOpenAIServer], bool], timeout: float = 10) -> bool:
        """Poll ``predicate(self)`` until it holds (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # lifecycle -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The URL to give the SDK, e.g. ``http://127.0.0.1:PORT/v1``."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> LocalOpenAIServer:
        """Bind, serve in a daemon thread, and return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = self._bind()
        config = uvicorn.Config(
            self.app,
            log_config=None,  # leave the host process's logging alone
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        server = self._server = uvicorn.Server(config)
        thread = self._thread = threading.Thread(
            target=self._serve, args=(server, sock), name="kern-openai-server", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the local OpenAI server failed to start")
            time.sleep(0.005)
        return self

    def _bind(self) -> socket.socket:
        """Bind now, so ``port`` (and ``base_url``) are known before serving."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        return sock

    @staticmethod
    def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        finally:
            sock.close()

    def stop(self) -> None:
        """Shut the server down and join its thread. Idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> LocalOpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # routes ----------------------------------------------------------------------

    async def _read(self, request: Request) -> JSON | Response:
        try:
            body = await request.json()
        except ClientDisconnect:  # gone before it finished sending: nothing to answer
            with self._counters.lock:
                self._counters.disconnects += 1
            return Response(status_code=499)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            error = {"message": "body must be a JSON object", "type": "invalid_request_error"}
            return JSONResponse({"error": {**error, "param": None, "code": None}}, 400)
        with self._counters.lock:
            self._counters.requests += 1
        self.last_request = body
        return body

    async def _responses(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        script = self.script.model_copy(deep=True)  # a mid-stream edit must not change it
        conversation = body.get("input")
        tokens = count_words(conversation) + count_words(body.get("instructions"))
        answer = plan(script, body, conversation, tokens)
        if body.get("stream"):
            events = response_events(body, answer)
        else:
            rid = f"resp_{uuid.uuid4().hex}"
            final = response_object(body, answer, rid, output_items(answer))
            events = iter([(json.dumps(final).encode(), False)])
        return _ScriptedResponse(events, script, self._counters, stream=bool(body.get("stream")))

    async def _chat(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        script = self.script.model_copy(deep=True)
        conversation = body.get("messages")
        answer = plan(script, body, conversation, count_words(conversation))
        if body.get("stream"):
            events = chat_events(body, answer)
        else:
            events = iter([(json.dumps(chat_completion(body, answer)).encode(), False)])
        return _ScriptedResponse(events, script, self._counters, stream=bool(body.get("stream")))

    async def _models(self, request: Request) -> Response:
        ids = ("gpt-5.2", "gpt-4o", "kern-local")
        data = [{"id": i, "object": "model", "created": 0, "owned_by": "kern"} for i in ids]
        return JSONResponse({"object": "list", "data": data})


def main(argv: list[str] | None = None) -> None:
    """Serve forever on ``--host``/``--port`` with the default story."""
    parser = argparse.ArgumentParser(
        prog="python -m kern.testing.openai_server",
        description="A local OpenAI-compatible server that streams a scripted story.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--chunk-size", type=int, default=1, help="words per delta")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between deltas")
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="initial stall (s)")
    args = parser.parse_args(argv)
    script = ServerScript(
        chunk_size=args.chunk_size,
        chunk_delay=args.chunk_delay,
        first_token_delay=args.first_token_delay,
    )
    server = LocalOpenAIServer(script, args.host, args.port)
    sock = server._bind()
    print(f"export OPENAI_BASE_URL={server.base_url} OPENAI_API_KEY=any", flush=True)
    config = uvicorn.Config(server.app, lifespan="off", ws="none")
    uvicorn.Server(config).run(sockets=[sock])  # in the main thread: Ctrl-C stops it


if __name__ == "__main__":
    main()
