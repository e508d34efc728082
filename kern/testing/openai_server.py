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
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kern.models.offline import story

__all__ = ["LocalOpenAIServer", "ScriptedToolCall", "ServerScript"]

JSON = dict[str, Any]
_Event = tuple[bytes, bool]  # (SSE frame, whether it is a delta the token rate applies to)


class ScriptedToolCall(BaseModel):
    """A function call the server asks for before it answers in text."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ServerScript(BaseModel):
    """What the server answers, and how fast. Mutable between requests.

    With ``tool_calls`` set, a request that offers tools and holds no tool
    results yet is answered with those calls; otherwise (and once results are
    present) the answer is ``text``, where ``{tool_output}`` stands for the last
    tool result. Each request reads the script once, when it arrives.
    """

    model_config = ConfigDict(validate_assignment=True)

    text: str = Field(default_factory=story)
    chunk_size: int = Field(default=1, ge=1)  # words per delta
    chunk_delay: float = Field(default=0.0, ge=0)  # seconds between deltas
    first_token_delay: float = Field(default=0.0, ge=0)  # silence after the headers
    tool_calls: list[ScriptedToolCall] = Field(default_factory=list)


# --- the answer, independent of the API that carries it ----------------------


@dataclass(slots=True)
class _Answer:
    pieces: list[str]  # text deltas, joined they are the text
    calls: list[tuple[str, str, str]]  # (call_id, name, arguments JSON)
    input_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        return len(self.text.split()) + sum(len(args.split()) for _, _, args in self.calls)


_WORD = re.compile(r"\s*\S+")
_TEXT_KEYS = frozenset({"content", "text", "output", "arguments", "input", "instructions"})


def _pieces(text: str, size: int) -> list[str]:
    """``text`` cut into runs of ``size`` words that join back to it exactly."""
    words = _WORD.findall(text)
    if not words:
        return [text] if text else []
    words[-1] += text[sum(map(len, words)) :]  # trailing whitespace rides on the last word
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def _count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    if isinstance(value, dict):
        return sum(_count_words(v) for k, v in value.items() if k in _TEXT_KEYS)
    return 0


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict))
    return ""


def _tool_outputs(items: Any) -> list[str]:
    """Tool results in a Responses ``input`` or a Chat ``messages`` list."""
    if not isinstance(items, list):
        return []
    outputs: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call_output":
            outputs.append(_text_of(item.get("output")))
        elif item.get("role") == "tool":
            outputs.append(_text_of(item.get("content")))
    return outputs


def _plan(script: ServerScript, body: JSON, conversation: Any, input_tokens: int) -> _Answer:
    outputs = _tool_outputs(conversation)
    if script.tool_calls and body.get("tools") and not outputs:
        calls = [
            (f"call_{uuid.uuid4().hex[:24]}", c.name, json.dumps(c.arguments))
            for c in script.tool_calls
        ]
        return _Answer([], calls, input_tokens)
    text = script.text.replace("{tool_output}", outputs[-1]) if outputs else script.text
    return _Answer(_pieces(text, script.chunk_size), [], input_tokens)


# --- Responses API ----------------------------------------------------------------


def _response_object(body: JSON, answer: _Answer, rid: str, output: list[JSON] | None) -> JSON:
    """The response resource; ``output=None`` while it is still in progress."""
    usage = {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }
    echoed = ("instructions", "max_output_tokens", "temperature", "top_p", "previous_response_id")
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress" if output is None else "completed",
        "error": None,
        "incomplete_details": None,
        **{key: body.get(key) for key in echoed},
        "metadata": body.get("metadata") or {},
        "model": body.get("model", "kern-local"),
        "output": output or [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "usage": None if output is None else usage,
    }


def _output_items(answer: _Answer) -> list[JSON]:
    """The finished output items: function calls, or one assistant message."""
    if answer.calls:
        return [
            {
                "id": f"fc_{uuid.uuid4().hex}",
                "type": "function_call",
                "status": "completed",
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            }
            for call_id, name, arguments in answer.calls
        ]
    part = {"type": "output_text", "text": answer.text, "annotations": [], "logprobs": []}
    return [
        {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
    ]


def _response_events(body: JSON, answer: _Answer) -> Iterator[_Event]:
    rid = f"resp_{uuid.uuid4().hex}"
    seq = iter(range(1 << 30))

    def sse(kind: str, **fields: Any) -> bytes:
        data = json.dumps({"type": kind, "sequence_number": next(seq), **fields})
        return f"event: {kind}\ndata: {data}\n\n".encode()

    opening = _response_object(body, answer, rid, None)
    yield sse("response.created", response=opening), False
    yield sse("response.in_progress", response=opening), False
    items = _output_items(answer)
    for index, item in enumerate(items):
        at = {"item_id": item["id"], "output_index": index}
        if item["type"] == "function_call":
            added = {**item, "arguments": "", "status": "in_progress"}
            yield sse("response.output_item.added", output_index=index, item=added), False
            for piece in _pieces(item["arguments"], 1):
                yield sse("response.function_call_arguments.delta", **at, delta=piece), True
            args = item["arguments"]
            yield sse("response.function_call_arguments.done", **at, arguments=args), False
        else:
            added = {**item, "content": [], "status": "in_progress"}
            yield sse("response.output_item.added", output_index=index, item=added), False
            part = item["content"][0]
            at["content_index"] = 0
            yield sse("response.content_part.added", **at, part={**part, "text": ""}), False
            for piece in answer.pieces:
                yield sse("response.output_text.delta", **at, delta=piece, logprobs=[]), True
            yield sse("response.output_text.done", **at, text=part["text"], logprobs=[]), False
            yield sse("response.content_part.done", **at, part=part), False
        yield sse("response.output_item.done", output_index=index, item=item), False
    yield sse("response.completed", response=_response_object(body, answer, rid, items)), False


# --- Chat Completions API -----------------------------------------------------------


def _chat_usage(answer: _Answer) -> JSON:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _chat_completion(body: JSON, answer: _Answer) -> JSON:
    message: JSON = {
        "role": "assistant",
        "content": None if answer.calls else answer.text,
        "refusal": None,
        "annotations": [],
    }
    if answer.calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in answer.calls
        ]
    finish = "tool_calls" if answer.calls else "stop"
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "kern-local"),
        "choices": [choice],
        "usage": _chat_usage(answer),
        "system_fingerprint": None,
    }


def _chat_events(body: JSON, answer: _Answer) -> Iterator[_Event]:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base: JSON = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "kern-local"),
        "system_fingerprint": None,
    }

    def sse(chunk: JSON) -> bytes:
        return f"data: {json.dumps(chunk)}\n\n".encode()

    def chunk(delta: JSON, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice], **({"usage": None} if include_usage else {})})

    yield chunk({"role": "assistant", "content": None if answer.calls else ""}), False
    for piece in answer.pieces:
        yield chunk({"content": piece}), True
    for index, (call_id, name, arguments) in enumerate(answer.calls):
        opening = {"index": index, "id": call_id, "type": "function"}
        opening["function"] = {"name": name, "arguments": ""}
        yield chunk({"tool_calls": [opening]}), False
        for piece in _pieces(arguments, 1):
            delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            yield chunk(delta), True
    yield chunk({}, "tool_calls" if answer.calls else "stop"), False
    if include_usage:
        yield sse({**base, "choices": [], "usage": _chat_usage(answer)}), False
    yield b"data: [DONE]\n\n", False


# --- delivery -----------------------------------------------------------------------


class _Counters:
    """The server's tallies, written by its loop thread and read by tests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.disconnects = self.completed_streams = self.active_streams = 0


class _ScriptedResponse(StreamingResponse):
    """Sends a paced body while watching for the client to leave.

    Starlette's own `StreamingResponse` only races the body against
    ``http.disconnect`` for ASGI spec < 2.4; from 2.4 on it relies on ``send``
    failing, which never happens while the body is silent (a stall). So this
    class always races the two, whatever the server's spec version.
    """

    def __init__(
        self,
        events: Iterator[_Event],
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
        events: Iterator[_Event], script: ServerScript, stream: bool
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

        if self._stream:
            with counters.lock:
                counters.active_streams += 1
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(first_of, deliver, group)
                group.start_soon(first_of, lambda: self.listen_for_disconnect(receive), group)
        finally:
            await self._body.aclose()
            with counters.lock:
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
        tokens = _count_words(conversation) + _count_words(body.get("instructions"))
        answer = _plan(script, body, conversation, tokens)
        if body.get("stream"):
            events = _response_events(body, answer)
        else:
            rid = f"resp_{uuid.uuid4().hex}"
            final = _response_object(body, answer, rid, _output_items(answer))
            events = iter([(json.dumps(final).encode(), False)])
        return _ScriptedResponse(events, script, self._counters, stream=bool(body.get("stream")))

    async def _chat(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        script = self.script.model_copy(deep=True)
        conversation = body.get("messages")
        answer = _plan(script, body, conversation, _count_words(conversation))
        if body.get("stream"):
            events = _chat_events(body, answer)
        else:
            events = iter([(json.dumps(_chat_completion(body, answer)).encode(), False)])
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
