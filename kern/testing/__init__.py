"""Test helpers shipped with kern: a local OpenAI-compatible server.

Imported lazily, so ``python -m kern.testing.openai_server`` runs cleanly and
importing this package costs nothing until a helper is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kern.testing.openai_server import LocalOpenAIServer, ScriptedToolCall, ServerScript

__all__ = ["LocalOpenAIServer", "ScriptedToolCall", "ServerScript"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kern.testing import openai_server

        return getattr(openai_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
