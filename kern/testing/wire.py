"""The OpenAI wire formats the local server speaks: Responses and Chat Completions.

Built from an `_Answer` (text pieces, tool calls, token counts) planned from a
`ServerScript`, as JSON bodies or as the SSE frames the real API streams.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kern.testing.script import ServerScript

JSON = dict[str, Any]
Event = tuple[bytes, bool]  # (SSE frame, whether it is a delta the token rate applies to)


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


def count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(v) for v in value)
    if isinstance(value, dict):
        return sum(count_words(v) for k, v in value.items() if k in _TEXT_KEYS)
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


def plan(script: ServerScript, body: JSON, conversation: Any, input_tokens: int) -> _Answer:
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


def response_object(body: JSON, answer: _Answer, rid: str, output: list[JSON] | None) -> JSON:
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


def output_items(answer: _Answer) -> list[JSON]:
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


def response_events(body: JSON, answer: _Answer) -> Iterator[Event]:
    rid = f"resp_{uuid.uuid4().hex}"
    seq = iter(range(1 << 30))

    def sse(kind: str, **fields: Any) -> bytes:
        data = json.dumps({"type": kind, "sequence_number": next(seq), **fields})
        return f"event: {kind}\ndata: {data}\n\n".encode()

    opening = response_object(body, answer, rid, None)
    yield sse("response.created", response=opening), False
    yield sse("response.in_progress", response=opening), False
    items = output_items(answer)
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
    yield sse("response.completed", response=response_object(body, answer, rid, items)), False


# --- Chat Completions API -----------------------------------------------------------


def _chat_usage(answer: _Answer) -> JSON:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def chat_completion(body: JSON, answer: _Answer) -> JSON:
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


def chat_events(body: JSON, answer: _Answer) -> Iterator[Event]:
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
