"""What the local OpenAI-compatible server answers, and how fast: `ServerScript`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kern.models.offline import story

__all__ = ["ScriptedToolCall", "ServerScript"]


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
