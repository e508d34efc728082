"""A model that needs no network: it streams scripted text at a chosen rate.

The embedded default for ``kern demo`` and a tool for users' own tests: it
stalls, streams, and asks for tool calls exactly as scripted, and it is
cancelled like any other model (its sleeps are plain awaits).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kern.models.base import Message, Model, ModelDelta, TextDelta, ToolCall, ToolSpec, Usage

_SENTENCES = (
    "Ember was a young dragon who lived above the clouds of the Cinder Peaks.",
    "One morning she found a glowing slate half buried in the ash, covered in strange symbols.",
    "The symbols moved when she breathed on them, and she realised they were a kind of spell.",
    "An old tortoise named Byte explained that the spell was called code.",
    "Code, he said, was how you told a machine exactly what to do, one small step at a time.",
    "Ember tried to write her first loop and set the tip of her tail on fire.",
    "She learned that every loop needs a way out, or it burns forever.",
    "Day after day she practised functions, variables and the patience of debugging.",
    "When the village well broke, Ember wrote a program to pump the water by moonlight.",
    "The villagers, who had always feared her, brought her baskets of warm bread.",
)


def story(words: int = 2000) -> str:
    """A deterministic story of about ``words`` words."""
    out: list[str] = []
    count = 0
    for chapter in itertools.count(1):
        out.append(f"Chapter {chapter}.")
        for sentence in _SENTENCES:
            out.append(sentence)
            count += len(sentence.split())
        if count >= words:
            return " ".join(out)
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """A tool call the offline model makes before answering."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


class OfflineModel(Model):
    """Streams ``text`` word by word: ``chunk_size`` words every ``chunk_delay`` s.

    With ``tool_calls`` and tools offered, the first answer is those calls; once
    the conversation holds their results, it streams ``text`` (where
    ``{tool_output}`` is replaced by the last tool result).
    """

    def __init__(
        self,
        text: str | None = None,
        *,
        id: str = "offline",
        chunk_size: int = 1,
        chunk_delay: float = 0.0,
        first_token_delay: float = 0.0,
        tool_calls: Sequence[ScriptedCall] = (),
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if chunk_delay < 0 or first_token_delay < 0:
            raise ValueError("delays cannot be negative")
        self.id = id
        self.text = story() if text is None else text
        self.chunk_size = chunk_size
        self.chunk_delay = chunk_delay
        self.first_token_delay = first_token_delay
        self.tool_calls = tuple(tool_calls)

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelDelta]:
        input_tokens = sum(len(m.content.split()) for m in messages)
        tool_results = [m for m in messages if m.role == "tool"]
        if self.tool_calls and tools and not tool_results:
            for n, call in enumerate(self.tool_calls):
                yield ToolCall(f"call_{n}", call.name, json.dumps(call.arguments))
            yield Usage(input_tokens, len(self.tool_calls))
            return
        text = self.text
        if tool_results and "{tool_output}" in text:
            text = text.replace("{tool_output}", tool_results[-1].content)
        if self.first_token_delay:
            await asyncio.sleep(self.first_token_delay)
        for n, piece in enumerate(_pieces(text, self.chunk_size)):
            if n and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            yield TextDelta(piece)
        yield Usage(input_tokens, text.count(" ") + 1)


def _pieces(text: str, size: int) -> Iterator[str]:
    """``text`` in pieces of ``size`` words, each after the first led by its space.

    Lazy: a run streaming a long text holds one piece at a time, not a list of
    every word (which, over thousands of concurrent runs, is most of a worker's memory).
    """
    start = pos = words = 0
    while (space := text.find(" ", pos)) != -1:
        words += 1
        pos = space + 1
        if words == size:
            yield text[start:space]
            start, words = space, 0
    yield text[start:]
