"""Models: the `Model` interface, OpenAI implementations and an offline one."""

from kern.models.base import Model, ModelDelta, TextDelta, ToolCall, Usage

__all__ = ["Model", "ModelDelta", "TextDelta", "ToolCall", "Usage"]
