"""OpenAI models through the official SDK: the Responses API and Chat Completions.

Both honour the SDK's usual settings: ``api_key`` / ``base_url`` arguments,
else ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` (``None`` is passed through and
the SDK reads its environment).

Cancellation: `stream` holds the SDK stream in ``async with``. When the task
iterating it is cancelled, at any await, including while waiting for the first
byte, the ``CancelledError`` unwinds through that block, which closes the HTTP
response at once: the server sees the connection drop and stops generating.
SDK errors propagate unchanged; the run loop reports them.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import TypeVar

import openai
from openai import omit
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)
from openai.types.responses import (
    FunctionToolParam,
    ResponseCompletedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInputItemParam,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
)

from kern.exceptions import ModelError
from kern.models.base import (
    Message,
    Model,
    ModelDelta,
    ModelResponse,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)

__all__ = ["OpenAIChat", "OpenAIResponses"]

T = TypeVar("T")


def _opt(value: T | None) -> T | openai.Omit:
    return omit if value is None else value


_Entry = tuple[openai.AsyncOpenAI, AsyncGenerator[None, None]]
_Settings = tuple[str | None, str | None, float | None]

# Every loop's clients, by settings (api key, base URL, timeout), shared by all
# models with those settings. Kept per loop, not per model: a model that is
# dropped must not take with it a client whose sockets are still open.
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Settings, _Entry]] = (
    weakref.WeakKeyDictionary()
)


class _LoopClients:
    """One `AsyncOpenAI` per event loop and settings, closed on that loop when it shuts down.

    An httpx client belongs to the loop it first ran on, so a model used from
    several loops (kern's background loop, the user's own, one per test) needs
    one client each; within a loop it is reused, which keeps connections alive
    between requests. Closing must happen on the client's own loop, so each
    client is paired with a parked async generator that closes it in its
    ``finally``: the loop runs that when it shuts down (``asyncio.run`` and
    ``asyncio.Runner`` call ``loop.shutdown_asyncgens``). kern's own background
    loop lives as long as the process, and so do its clients.
    """

    def __init__(self, settings: _Settings, factory: Callable[[], openai.AsyncOpenAI]) -> None:
        self._settings = settings
        self._factory = factory

    async def get(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        clients = _SHARED.setdefault(loop, {})
        entry = clients.get(self._settings)
        if entry is not None:
            return entry[0]
        client = self._factory()
        keeper = _close_when_done(client, loop, self._settings)
        clients[self._settings] = (client, keeper)
        await keeper.asend(None)  # first step: from now on the loop tracks the generator
        return client

    async def aclose(self) -> None:
        entry = _SHARED.get(asyncio.get_running_loop(), {}).get(self._settings)
        if entry is not None:
            await entry[1].aclose()


async def _close_when_done(
    client: openai.AsyncOpenAI, loop: asyncio.AbstractEventLoop, settings: _Settings
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        _SHARED.get(loop, {}).pop(settings, None)
        await client.close()


class _OpenAIModel(Model):
    """Settings and client handling shared by both APIs."""

    def __init__(
        self,
        id: str,
        *,
        api_key: str | None,
        base_url: str | None,
        temperature: float | None,
        max_tokens: int | None,
        client: openai.AsyncOpenAI | None,
        timeout: float | None,
    ) -> None:
        self.id = id
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._client = client
        self._clients = _LoopClients(
            (api_key, base_url, timeout),
            functools.partial(
                openai.AsyncOpenAI,
                api_key=api_key,
                base_url=base_url,
                # The SDK reads timeout=None as "never time out"; unset keeps its default.
                timeout=openai.not_given if timeout is None else timeout,
            ),
        )

    async def client(self) -> openai.AsyncOpenAI:
        """The SDK client for the running loop: the one given, or this loop's own."""
        return self._client if self._client is not None else await self._clients.get()

    async def aclose(self) -> None:
        """Close the running loop's client, unless it was passed in (the caller owns that)."""
        await self._clients.aclose()


class OpenAIResponses(_OpenAIModel):
    """An OpenAI model behind the Responses API (``POST /v1/responses``)."""

    def __init__(
        self,
        id: str = "gpt-5.2",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
        client: openai.AsyncOpenAI | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(
            id,
            api_key=api_key,
            base_url=base_url,
            temperature=temperature,
            max_tokens=max_output_tokens,
            client=client,
            timeout=timeout,
        )

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelDelta]:
        """Text deltas as they arrive, each function call once complete, then usage."""
        client = await self.client()
        instructions, items = _responses_input(messages)
        events = await client.responses.create(
            model=self.id,
            input=items,
            instructions=_opt(instructions),
            tools=_responses_tools(tools),
            temperature=_opt(self.temperature),
            max_output_tokens=_opt(self.max_tokens),
            stream=True,
        )
        async with events:  # closes the HTTP response however the loop below ends
            async for event in events:
                if isinstance(event, ResponseTextDeltaEvent):
                    if event.delta:
                        yield TextDelta(event.delta)
                elif isinstance(event, ResponseOutputItemDoneEvent):
                    if isinstance(event.item, ResponseFunctionToolCall):
                        yield _tool_call(event.item)
                elif isinstance(event, ResponseCompletedEvent | ResponseIncompleteEvent):
                    if event.response.usage is not None:
                        usage = event.response.usage
                        yield Usage(usage.input_tokens, usage.output_tokens)
                elif isinstance(event, ResponseFailedEvent):
                    error = event.response.error
                    raise ModelError(error.message if error else "the response failed")
                elif isinstance(event, ResponseErrorEvent):
                    raise ModelError(event.message)

    async def request(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> ModelResponse:
        """One non-streaming call to the Responses API."""
        client = await self.client()
        instructions, items = _responses_input(messages)
        response = await client.responses.create(
            model=self.id,
            input=items,
            instructions=_opt(instructions),
            tools=_responses_tools(tools),
            temperature=_opt(self.temperature),
            max_output_tokens=_opt(self.max_tokens),
        )
        if response.error is not None:
            raise ModelError(response.error.message)
        calls = [_tool_call(i) for i in response.output if isinstance(i, ResponseFunctionToolCall)]
        usage = response.usage
        return ModelResponse(
            text=response.output_text,
            tool_calls=calls,
            usage=Usage(usage.input_tokens, usage.output_tokens) if usage else Usage(),
        )


class OpenAIChat(_OpenAIModel):
    """An OpenAI model behind Chat Completions (``POST /v1/chat/completions``).

    ``max_tokens`` is sent as ``max_completion_tokens``, the name current
    OpenAI models require.
    """

    def __init__(
        self,
        id: str = "gpt-4o",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        client: openai.AsyncOpenAI | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(
            id,
            api_key=api_key,
            base_url=base_url,
            temperature=temperature,
            max_tokens=max_tokens,
            client=client,
            timeout=timeout,
        )

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelDelta]:
        """Text deltas as they arrive, then the tool calls (assembled by index), then usage."""
        client = await self.client()
        chunks = await client.chat.completions.create(
            model=self.id,
            messages=_chat_messages(messages),
            tools=_chat_tools(tools),
            temperature=_opt(self.temperature),
            max_completion_tokens=_opt(self.max_tokens),
            stream=True,
            stream_options={"include_usage": True},
        )
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
        usage: Usage | None = None
        async with chunks:  # closes the HTTP response however the loop below ends
            async for chunk in chunks:
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield TextDelta(choice.delta.content)
                    for part in choice.delta.tool_calls or ():
                        call = calls.setdefault(part.index, ["", "", ""])
                        call[0] = call[0] or part.id or ""
                        if part.function is not None:
                            # The name comes whole in one delta; some servers repeat it.
                            call[1] = call[1] or part.function.name or ""
                            call[2] += part.function.arguments or ""
        for index in sorted(calls):
            yield ToolCall(*calls[index])
        if usage is not None:
            yield usage

    async def request(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> ModelResponse:
        """One non-streaming call to Chat Completions."""
        client = await self.client()
        completion = await client.chat.completions.create(
            model=self.id,
            messages=_chat_messages(messages),
            tools=_chat_tools(tools),
            temperature=_opt(self.temperature),
            max_completion_tokens=_opt(self.max_tokens),
        )
        if not completion.choices:
            raise ModelError("the chat completion has no choices")
        message = completion.choices[0].message
        calls = [
            ToolCall(c.id, c.function.name, c.function.arguments)
            for c in message.tool_calls or ()
            if isinstance(c, ChatCompletionMessageFunctionToolCall)
        ]
        usage = completion.usage
        return ModelResponse(
            text=message.content or "",
            tool_calls=calls,
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
        )


# --- kern messages and tools -> wire format -----------------------------------------


def _tool_call(item: ResponseFunctionToolCall) -> ToolCall:
    return ToolCall(call_id=item.call_id, name=item.name, arguments=item.arguments)


def _responses_input(
    messages: Sequence[Message],
) -> tuple[str | None, list[ResponseInputItemParam]]:
    """System messages become ``instructions``; the rest become input items."""
    system = [m.content for m in messages if m.role == "system"]
    items: list[ResponseInputItemParam] = []
    for m in messages:
        if m.role == "user" or (m.role == "assistant" and m.content):
            items.append({"role": m.role, "content": m.content})
        if m.role == "assistant":
            for call in m.tool_calls:
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.call_id,
                        "name": call.name,
                        "arguments": call.arguments,
                    }
                )
        elif m.role == "tool":
            call_id = m.tool_call_id or ""
            items.append({"type": "function_call_output", "call_id": call_id, "output": m.content})
    return ("\n\n".join(system) or None), items


def _responses_tools(tools: Sequence[ToolSpec]) -> list[FunctionToolParam] | openai.Omit:
    # strict=False: kern's schemas need not meet strict mode's rules (all fields required).
    return [
        {
            "type": "function",
            "name": t.name,
            "description": t.description,
            "parameters": t.parameters,
            "strict": False,
        }
        for t in tools
    ] or omit


def _chat_messages(messages: Sequence[Message]) -> list[ChatCompletionMessageParam]:
    out: list[ChatCompletionMessageParam] = []
    for m in messages:
        if m.role == "system":
            out.append({"role": "system", "content": m.content})
        elif m.role == "user":
            out.append({"role": "user", "content": m.content})
        elif m.role == "assistant":
            message: ChatCompletionAssistantMessageParam = {
                "role": "assistant",
                "content": m.content or None,
            }
            if m.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": c.call_id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in m.tool_calls
                ]
            out.append(message)
        else:
            out.append({"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content})
    return out


def _chat_tools(tools: Sequence[ToolSpec]) -> list[ChatCompletionFunctionToolParam] | openai.Omit:
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools
    ] or omit
