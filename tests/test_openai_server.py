"""The local OpenAI-compatible server, spoken to through the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent

from kern.testing import LocalOpenAIServer, ScriptedToolCall, ServerScript

WEATHER_TOOL = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}
CHAT_WEATHER_TOOL = {
    "type": "function",
    "function": {k: v for k, v in WEATHER_TOOL.items() if k not in ("type", "strict")},
}
USER = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalOpenAIServer]:
    with LocalOpenAIServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_script(server: LocalOpenAIServer) -> None:
    server.script = ServerScript()
    server.reset_counters()


@pytest.fixture
def client(server: LocalOpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="any", max_retries=0) as client:
        yield client


def text_of(events: list[ResponseStreamEvent]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def chat_text(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- Responses API --------------------------------------------------------------------


def test_responses_stream_round_trips_the_story(
    server: LocalOpenAIServer, client: openai.OpenAI
) -> None:
    text = server.script.text
    assert len(text.split()) >= 2000

    events = list(client.responses.create(model="m", input="Tell me a story.", stream=True))

    assert text_of(events) == text
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-5:] == [
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.output_text == text
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == len(text.split())
    assert last.response.usage.input_tokens == 4
    assert server.completed_streams == 1 and server.disconnects == 0
    assert server.requests == 1 and server.active_streams == 0


def test_responses_without_stream(server: LocalOpenAIServer, client: openai.OpenAI) -> None:
    server.script.text = "  Once upon\ta time,\n\nthe end.  "
    response = client.responses.create(model="m", input="hi", instructions="Be brief.")
    assert response.output_text == server.script.text
    assert response.status == "completed"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 6)
    assert server.last_request == {"model": "m", "input": "hi", "instructions": "Be brief."}


def test_chunk_size_groups_words(server: LocalOpenAIServer, client: openai.OpenAI) -> None:
    server.script = ServerScript(text="one two three four five six seven", chunk_size=3)
    events = list(client.responses.create(model="m", input="hi", stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["one two three", " four five six", " seven"]


def test_responses_tool_calls_then_answer(server: LocalOpenAIServer, client: openai.OpenAI) -> None:
    server.script = ServerScript(
        text="It is {tool_output} today.",
        tool_calls=[ScriptedToolCall(name="weather", arguments={"city": "Paris"})],
    )
    events = list(
        client.responses.create(model="m", input="Weather?", tools=[WEATHER_TOOL], stream=True)
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert "response.output_text.delta" not in kinds
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == '{"city": "Paris"}'
    last = events[-1]
    assert last.type == "response.completed"
    (call,) = last.response.output
    assert call.type == "function_call"
    assert (call.name, call.arguments) == ("weather", '{"city": "Paris"}')

    # Not streamed: the same call.
    response = client.responses.create(model="m", input="Weather?", tools=[WEATHER_TOOL])
    assert [(o.type, getattr(o, "name", None)) for o in response.output] == [
        ("function_call", "weather")
    ]

    # With the result in the conversation, the answer is the text.
    answer = client.responses.create(
        model="m",
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": "Weather?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert answer.output_text == "It is sunny today."


def test_tool_calls_need_tools_offered(server: LocalOpenAIServer, client: openai.OpenAI) -> None:
    server.script = ServerScript(text="plain", tool_calls=[ScriptedToolCall(name="weather")])
    assert client.responses.create(model="m", input="hi").output_text == "plain"


# --- Chat Completions -----------------------------------------------------------------


def test_chat_stream_with_usage(server: LocalOpenAIServer, client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chat_text(chunks) == server.script.text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (4, len(server.script.text.split()))
    assert all(c.usage is None for c in chunks[:-1])
    assert server.completed_streams == 1


def test_chat_stream_without_usage(server: LocalOpenAIServer, client: openai.OpenAI) -> None:
    server.script.text = "short answer"
    chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True))
    assert chat_text(chunks) == "short answer"
    assert all(c.usage is None for c in chunks)


def test_chat_without_stream(server: LocalOpenAIServer, client: openai.OpenAI) -> None:
    server.script.text = "short answer"
    completion = client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "short answer"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 6


def test_chat_tool_calls(server: LocalOpenAIServer, client: openai.OpenAI) -> None:
    server.script = ServerScript(
        text="Result: {tool_output}",
        tool_calls=[
            ScriptedToolCall(name="weather", arguments={"city": "Paris"}),
            ScriptedToolCall(name="weather", arguments={"city": "Rome"}),
        ],
    )
    chunks = list(
        client.chat.completions.create(
            model="m", messages=USER, tools=[CHAT_WEATHER_TOOL], stream=True
        )
    )
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for part in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(part.index, ["", "", ""])
            entry[0] += part.id or ""
            assert part.function is not None
            entry[1] += part.function.name or ""
            entry[2] += part.function.arguments or ""
    assert [c[1:] for c in calls.values()] == [
        ["weather", '{"city": "Paris"}'],
        ["weather", '{"city": "Rome"}'],
    ]
    assert all(c[0].startswith("call_") for c in calls.values())
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    completion = client.chat.completions.create(model="m", messages=USER, tools=[CHAT_WEATHER_TOOL])
    tool_calls = completion.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in tool_calls if c.type == "function"] == [
        '{"city": "Paris"}',
        '{"city": "Rome"}',
    ]

    answer = client.chat.completions.create(
        model="m",
        tools=[CHAT_WEATHER_TOOL],
        messages=[
            *USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [tc.model_dump() for tc in tool_calls],
            },
            {"role": "tool", "tool_call_id": tool_calls[0].id, "content": "rain"},
        ],
    )
    assert answer.choices[0].message.content == "Result: rain"


# --- async SDK ------------------------------------------------------------------------


async def test_async_client_parses_both_apis(server: LocalOpenAIServer) -> None:
    server.script.text = "The dragon wrote a loop, and it ended."
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="any") as client:
        stream = await client.responses.create(model="m", input="hi", stream=True)
        events = [e async for e in stream]
        assert text_of(events) == server.script.text

        chat = await client.chat.completions.create(model="m", messages=USER, stream=True)
        assert chat_text([c async for c in chat]) == server.script.text

        response = await client.responses.create(model="m", input="hi")
        assert response.output_text == server.script.text
    assert server.completed_streams == 2


# --- pacing and disconnects -------------------------------------------------------------


def test_stall_and_token_rate(server: LocalOpenAIServer, client: openai.OpenAI) -> None:
    server.script = ServerScript(text="a b c d e f", first_token_delay=0.5, chunk_delay=0.1)
    start = time.monotonic()
    with client.responses.create(model="m", input="hi", stream=True) as stream:
        opened = time.monotonic() - start  # the headers come before the stall
        stamps = [
            time.monotonic() - start for e in stream if e.type == "response.output_text.delta"
        ]
    assert opened < 0.4
    assert stamps[0] >= 0.4
    assert stamps[-1] - stamps[0] >= 5 * 0.1 * 0.8


def test_a_stalled_stream_does_not_block_others(
    server: LocalOpenAIServer, client: openai.OpenAI
) -> None:
    server.script = ServerScript(text="slow", first_token_delay=5)
    with client.responses.create(model="m", input="hi", stream=True):
        server.script = ServerScript(text="fast")
        start = time.monotonic()
        assert client.responses.create(model="m", input="hi").output_text == "fast"
        assert time.monotonic() - start < 1
        assert server.active_streams == 1
    assert server.wait_for(lambda s: s.active_streams == 0 and s.disconnects == 1)


def test_closing_mid_stream_is_a_disconnect(
    server: LocalOpenAIServer, client: openai.OpenAI
) -> None:
    server.script.chunk_delay = 0.01
    stream = client.responses.create(model="m", input="hi", stream=True)
    deltas = 0
    for event in stream:
        deltas += event.type == "response.output_text.delta"
        if deltas == 10:
            break
    assert server.active_streams == 1
    stream.close()
    assert server.wait_for(lambda s: s.disconnects == 1, timeout=5)
    assert server.completed_streams == 0 and server.active_streams == 0


def test_closing_during_the_stall_is_a_disconnect(
    server: LocalOpenAIServer, client: openai.OpenAI
) -> None:
    server.script.first_token_delay = 5
    stream = client.chat.completions.create(model="m", messages=USER, stream=True)
    assert server.wait_for(lambda s: s.active_streams == 1, timeout=5)
    closed = time.monotonic()
    stream.close()
    assert server.wait_for(lambda s: s.disconnects == 1, timeout=5)
    assert time.monotonic() - closed < 1
    assert server.completed_streams == 0


async def test_cancelling_an_async_reader_during_the_stall(server: LocalOpenAIServer) -> None:
    server.script.first_token_delay = 5
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="any") as client:

        async def read() -> None:
            async with await client.responses.create(model="m", input="hi", stream=True) as s:
                async for _ in s:
                    pass

        task = asyncio.create_task(read())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert server.wait_for(lambda s: s.disconnects == 1, timeout=5)


def test_a_timed_out_plain_request_is_a_disconnect(
    server: LocalOpenAIServer, client: openai.OpenAI
) -> None:
    server.script.first_token_delay = 5
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).responses.create(model="m", input="hi")
    assert server.wait_for(lambda s: s.disconnects == 1, timeout=5)


# --- the rest -------------------------------------------------------------------------------


def test_models_and_bad_requests(server: LocalOpenAIServer, client: openai.OpenAI) -> None:
    assert "gpt-5.2" in [m.id for m in client.models.list()]
    reply = httpx.post(f"{server.base_url}/chat/completions", content=b"not json")
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert server.requests == 0


def test_script_edits_do_not_touch_a_running_stream(
    server: LocalOpenAIServer, client: openai.OpenAI
) -> None:
    server.script = ServerScript(text="first version of the text", chunk_delay=0.01)
    with client.responses.create(model="m", input="hi", stream=True) as stream:
        server.script.text = "changed"
        assert text_of(list(stream)) == "first version of the text"


def test_command_line_serves_until_stopped() -> None:
    command = [sys.executable, "-W", "error", "-m", "kern.testing.openai_server", "--port", "0"]
    command += ["--chunk-delay", "0", "--first-token-delay", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline().decode()
        base_url = first_line.split("OPENAI_BASE_URL=")[1].split()[0]
        with openai.OpenAI(base_url=base_url, api_key="any", max_retries=0) as client:
            deadline = time.monotonic() + 15
            while True:
                try:
                    answer = client.responses.create(model="m", input="hi")
                    break
                except openai.APIConnectionError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        assert answer.output_text.startswith("Chapter 1.")
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=10)
    assert b"Warning" not in errors  # e.g. runpy's "found in sys.modules" warning
