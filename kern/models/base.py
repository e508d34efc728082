"""The model interface: one abstract streaming method, plus an optional one-shot request.

A model turns a conversation (`Message` list) and tool schemas into a stream of
`ModelDelta`s: text pieces, complete tool calls, and usage. The run loop never
sees a provider's wire format.

Cancellation contract: the run loop cancels the task that iterates `stream()`.
An implementation must release its upstream connection when that happens, which
``async with`` / ``try/finally`` around the provider's stream gives for free.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete call of a tool requested by the model."""

    call_id: str
    name: str
    arguments: str  # JSON text, as the model produced it


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of the conversation, in a provider-neutral form."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # set on role="tool": the call this answers
    name: str | None = None  # set on role="tool": the tool's name


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What the model is told about a tool: name, description, JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


ModelDelta = TextDelta | ToolCall | Usage


@dataclass(slots=True)
class ModelResponse:
    """A whole answer, as `Model.request` returns it."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def deltas(self) -> list[ModelDelta]:
        out: list[ModelDelta] = []
        if self.text:
            out.append(TextDelta(self.text))
        out.extend(self.tool_calls)
        out.append(self.usage)
        return out


class Model(abc.ABC):
    """A language model. Subclasses implement `stream`; `request` is optional."""

    id: str

    @abc.abstractmethod
    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelDelta]:
        """Stream the answer to ``messages``: text deltas, then tool calls and usage."""

    async def request(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> ModelResponse:
        """Answer in one piece. The default collects `stream`."""
        response = ModelResponse()
        parts: list[str] = []
        async for delta in self.stream(messages, tools):
            if isinstance(delta, TextDelta):
                parts.append(delta.text)
            elif isinstance(delta, ToolCall):
                response.tool_calls.append(delta)
            else:
                response.usage = delta
        response.text = "".join(parts)
        return response

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients the model holds. Optional."""
