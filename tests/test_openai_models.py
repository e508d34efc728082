"""`OpenAIResponses` and `OpenAIChat` against the local server, through the real SDK."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Iterator, Sequence

import httpx2
import openai
import pytest

from kern.exceptions import ModelError
from kern.models.base import Message, ModelDelta, TextDelta, ToolCall, ToolSpec, Usage
from kern.models.openai import OpenAIChat, OpenAIResponses
from kern.testing import LocalOpenAIServer, ScriptedToolCall, ServerScript

OpenAIModel = OpenAIResponses | OpenAIChat

WEATHER = ToolSpec(
    name="weather",
    description="The weather in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
ASK = [Message("system", "You are terse."), Message("user", "Tell me a story.")]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalOpenAIServer]:
    with LocalOpenAIServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_script(server: LocalOpenAIServer) -> None:
    server.script = ServerScript()
    server.reset_counters()


@pytest.fixture(params=[OpenAIResponses, OpenAIChat])
def model(request: pytest.FixtureRequest, server: LocalOpenAIServer) -> OpenAIModel:
    cls: type[OpenAIModel] = request.param
    return cls("test-model", base_url=server.base_url, api_key="any")


async def collect(
    model: OpenAIModel, messages: list[Message], tools: Sequence[ToolSpec] = ()
) -> list[ModelDelta]:
    return [delta async for delta in model.stream(messages, tools)]


async def test_stream_round_trips_the_text(server: LocalOpenAIServer, model: OpenAIModel) -> None:
    deltas = await collect(model, ASK)
    texts = [d for d in deltas if isinstance(d, TextDelta)]
    assert "".join(d.text for d in texts) == server.script.text
    assert all(d.text for d in texts)
    assert deltas[-1] == Usage(input_tokens=7, output_tokens=len(server.script.text.split()))
    assert server.completed_streams == 1 and server.disconnects == 0


async def test_request_returns_the_whole_answer(
    server: LocalOpenAIServer, model: OpenAIModel
) -> None:
    server.script.text = "A short tale."
    response = await model.request(ASK, [])
    assert response.text == "A short tale."
    assert response.tool_calls == []
    assert response.usage == Usage(7, 3)
    assert server.last_request is not None and "stream" not in server.last_request


async def test_system_messages_and_settings_on_the_wire(server: LocalOpenAIServer) -> None:
    server.script.text = "ok"
    base = {"base_url": server.base_url, "api_key": "any"}
    await collect(OpenAIResponses("r", temperature=0.2, max_output_tokens=50, **base), ASK)
    sent = server.last_request
    assert sent is not None
    assert sent["instructions"] == "You are terse."
    assert sent["input"] == [{"role": "user", "content": "Tell me a story."}]
    assert (sent["temperature"], sent["max_output_tokens"], sent["stream"]) == (0.2, 50, True)
    assert "tools" not in sent

    await collect(OpenAIChat("c", max_tokens=20, **base), ASK)
    sent = server.last_request
    assert sent is not None
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me a story."},
    ]
    assert sent["max_completion_tokens"] == 20
    assert sent["stream_options"] == {"include_usage": True}
    assert "temperature" not in sent and "tools" not in sent


async def test_tool_calls_round_trip(server: LocalOpenAIServer, model: OpenAIModel) -> None:
    server.script = ServerScript(
        text="It is {tool_output}.",
        tool_calls=[
            ScriptedToolCall(name="weather", arguments={"city": "Paris"}),
            ScriptedToolCall(name="weather", arguments={"city": "Oslo"}),
        ],
    )
    deltas = await collect(model, ASK, [WEATHER])
    calls = [d for d in deltas if isinstance(d, ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [
        ("weather", '{"city": "Paris"}'),
        ("weather", '{"city": "Oslo"}'),
    ]
    assert all(c.call_id.startswith("call_") for c in calls)
    assert not any(isinstance(d, TextDelta) for d in deltas)
    assert isinstance(deltas[-1], Usage)

    sent = server.last_request
    assert sent is not None
    if isinstance(model, OpenAIResponses):
        assert sent["tools"] == [
            {
                "type": "function",
                "name": "weather",
                "description": WEATHER.description,
                "parameters": WEATHER.parameters,
                "strict": False,
            }
        ]
    else:
        assert sent["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": WEATHER.description,
                    "parameters": WEATHER.parameters,
                },
            }
        ]

    history = [
        *ASK,
        Message("assistant", "Let me look.", tool_calls=tuple(calls)),
        Message("tool", "sunny", tool_call_id=calls[0].call_id, name="weather"),
        Message("tool", "snowy", tool_call_id=calls[1].call_id, name="weather"),
    ]
    answer = await collect(model, history, [WEATHER])
    assert "".join(d.text for d in answer if isinstance(d, TextDelta)) == "It is snowy."

    sent = server.last_request
    assert sent is not None
    if isinstance(model, OpenAIResponses):
        assert sent["input"][1:] == [
            {"role": "assistant", "content": "Let me look."},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "weather",
                "arguments": calls[0].arguments,
            },
            {
                "type": "function_call",
                "call_id": calls[1].call_id,
                "name": "weather",
                "arguments": calls[1].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
            {"type": "function_call_output", "call_id": calls[1].call_id, "output": "snowy"},
        ]
    else:
        assistant, *results = sent["messages"][2:]
        assert assistant["role"] == "assistant" and assistant["content"] == "Let me look."
        assert [c["id"] for c in assistant["tool_calls"]] == [c.call_id for c in calls]
        assert assistant["tool_calls"][0]["function"] == {
            "name": "weather",
            "arguments": '{"city": "Paris"}',
        }
        assert results == [
            {"role": "tool", "tool_call_id": calls[0].call_id, "content": "sunny"},
            {"role": "tool", "tool_call_id": calls[1].call_id, "content": "snowy"},
        ]


async def test_request_with_tool_calls(server: LocalOpenAIServer, model: OpenAIModel) -> None:
    server.script.tool_calls = [ScriptedToolCall(name="weather", arguments={"city": "Lima"})]
    response = await model.request(ASK, [WEATHER])
    assert response.text == ""
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("weather", '{"city": "Lima"}')]
    assert response.usage.output_tokens == 2


# --- cancellation --------------------------------------------------------------------------


async def cancel_after(model: OpenAIModel, started: asyncio.Event | None, wait: float) -> float:
    """Cancel a task reading ``model.stream`` and return how long it took to end."""

    async def read() -> None:
        async for delta in model.stream(ASK, []):
            if started is not None and isinstance(delta, TextDelta):
                started.set()

    task = asyncio.create_task(read())
    if started is not None:
        await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(wait)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - cancelled_at


async def test_cancel_mid_stream_closes_the_response(
    server: LocalOpenAIServer, model: OpenAIModel
) -> None:
    server.script.chunk_delay = 0.01
    took = await cancel_after(model, asyncio.Event(), 0.1)
    assert took < 1
    assert server.wait_for(lambda s: s.disconnects == 1, timeout=5)
    assert server.completed_streams == 0 and server.active_streams == 0


async def test_cancel_during_the_first_token_stall(
    server: LocalOpenAIServer, model: OpenAIModel
) -> None:
    server.script.first_token_delay = 5
    took = await cancel_after(model, None, 0.3)
    assert took < 1
    assert server.wait_for(lambda s: s.disconnects == 1, timeout=5)
    assert server.completed_streams == 0


async def test_cancel_a_plain_request_during_the_stall(
    server: LocalOpenAIServer, model: OpenAIModel
) -> None:
    server.script.first_token_delay = 5
    task = asyncio.create_task(model.request(ASK, []))
    await asyncio.sleep(0.3)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - cancelled_at < 1
    assert server.wait_for(lambda s: s.disconnects == 1, timeout=5)


async def test_breaking_out_and_closing_the_stream_disconnects(
    server: LocalOpenAIServer, model: OpenAIModel
) -> None:
    server.script.chunk_delay = 0.01
    deltas = model.stream(ASK, [])
    async for _ in deltas:
        break
    await deltas.aclose()  # type: ignore[attr-defined]
    assert server.wait_for(lambda s: s.disconnects == 1, timeout=5)


# --- settings, errors, clients ---------------------------------------------------------------


async def test_environment_supplies_key_and_url(
    server: LocalOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    server.script.text = "env"
    assert (await OpenAIResponses().request(ASK, [])).text == "env"
    assert (await OpenAIChat().request(ASK, [])).text == "env"
    assert server.last_request is not None and server.last_request["model"] == "gpt-4o"


async def test_sdk_errors_propagate(
    server: LocalOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_path = server.base_url.removesuffix("/v1")
    with pytest.raises(openai.NotFoundError):
        await collect(OpenAIResponses(base_url=wrong_path, api_key="any"), ASK)
    with pytest.raises(openai.NotFoundError):
        await OpenAIChat(base_url=wrong_path, api_key="any").request(ASK, [])

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(openai.OpenAIError, match="credentials"):
        await collect(OpenAIChat(base_url=server.base_url), ASK)


def test_one_client_per_loop_closed_with_its_loop(server: LocalOpenAIServer) -> None:
    model = OpenAIResponses(base_url=server.base_url, api_key="any")

    async def two_requests() -> openai.AsyncOpenAI:
        client = await model.client()
        await model.request(ASK, [])
        await collect(model, ASK)
        assert await model.client() is client
        return client

    first = asyncio.run(two_requests())
    second = asyncio.run(two_requests())
    assert first is not second
    # asyncio.run shuts each loop's async generators down, and that closed its client.
    assert first.is_closed() and second.is_closed()
    gc.collect()  # under filterwarnings=error, a leaked socket would fail here


async def test_a_given_client_is_used_and_left_open(server: LocalOpenAIServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="any") as client:
        model = OpenAIChat("m", client=client)
        server.script.text = "given"
        assert (await model.request(ASK, [])).text == "given"
        assert await model.client() is client
        await model.aclose()
        assert not client.is_closed()


async def test_aclose_closes_the_loops_client(server: LocalOpenAIServer) -> None:
    model = OpenAIResponses(base_url=server.base_url, api_key="any")
    client = await model.client()
    await model.aclose()
    assert client.is_closed()
    assert await model.client() is not client  # a fresh one on next use
    await model.aclose()


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("response.failed", {"response": {"id": "r", "object": "response", "created_at": 0,
                                          "model": "m", "output": [], "status": "failed",
                                          "error": {"code": "server_error", "message": "boom"},
                                          "parallel_tool_calls": True, "tool_choice": "auto",
                                          "tools": []}}),
        ("error", {"message": "boom", "code": None, "param": None}),
    ],
)  # fmt: skip
async def test_a_failed_stream_raises_model_error(kind: str, data: dict[str, object]) -> None:
    # The local server never fails, so a mock transport plays the failing stream.
    payload = json.dumps({"type": kind, "sequence_number": 0, **data})
    body = f"event: {kind}\ndata: {payload}\n\n".encode()

    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    transport = httpx2.MockTransport(reply)
    async with httpx2.AsyncClient(transport=transport) as http:
        client = openai.AsyncOpenAI(api_key="any", base_url="http://mock/v1", http_client=http)
        with pytest.raises(ModelError, match="boom"):
            await collect(OpenAIResponses(client=client), ASK)
