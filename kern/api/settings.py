"""The HTTP API's settings, one typed object; read from the environment or given in code."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kern.exceptions import ConfigError

DispatchKind = Literal["inline", "queue"]

ENV_SECURITY_KEY = "KERN_SECURITY_KEY"
ENV_DISPATCH = "KERN_DISPATCH"
ENV_CANCEL_ON_DISCONNECT = "KERN_CANCEL_ON_DISCONNECT"
ENV_MAX_BODY_BYTES = "KERN_MAX_BODY_BYTES"

DEFAULT_PORT = 7777
MAX_CANCEL_WAIT = 30.0
"""The longest ``?wait=`` a cancel request may ask for, in seconds."""
MAX_EVENT_ID = 2**63 - 1
"""The largest ``Last-Event-ID`` accepted (a Redis stream id part is a 64-bit integer)."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class ApiSettings(BaseModel):
    """How an API process behaves. ``kern serve`` passes these to its workers by environment."""

    model_config = ConfigDict(frozen=True)

    security_key: str | None = None
    """When set, every route but ``/health`` needs ``Authorization: Bearer <key>``."""
    dispatch: DispatchKind = "inline"
    """``inline``: runs execute in this process; ``queue``: ``kern worker``s execute them."""
    cancel_on_disconnect: bool = False
    """Cancel a run when the client that started it drops its connection (default: keep going)."""
    max_body_bytes: int = Field(default=1 << 20, gt=0)
    keepalive: float = Field(default=15.0, gt=0)
    """Seconds of silence after which an SSE stream sends a comment line."""
    follow_poll: float = Field(default=0.05, gt=0)
    """Seconds between reads of the event log when following a run executing elsewhere."""
    end_grace: float = Field(default=1.0, ge=0)
    """Seconds to wait for a stopped run's terminal event before answering from its record."""
    shutdown_grace: float = Field(default=5.0, ge=0)
    """Seconds a stopping server gives its runs to end after cancelling them."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ApiSettings:
        """Settings from ``KERN_SECURITY_KEY``, ``KERN_DISPATCH``, ``KERN_CANCEL_ON_DISCONNECT``
        and ``KERN_MAX_BODY_BYTES``; defaults for the rest."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "security_key": env.get(ENV_SECURITY_KEY) or None,
            "cancel_on_disconnect": _flag(env.get(ENV_CANCEL_ON_DISCONNECT, "")),
        }
        dispatch = env.get(ENV_DISPATCH)
        if dispatch:
            if dispatch not in ("inline", "queue"):
                raise ConfigError(f"{ENV_DISPATCH} must be 'inline' or 'queue', got {dispatch!r}")
            values["dispatch"] = dispatch
        size = env.get(ENV_MAX_BODY_BYTES)
        if size:
            try:
                values["max_body_bytes"] = int(size)
            except ValueError:
                raise ConfigError(
                    f"{ENV_MAX_BODY_BYTES} must be an integer, got {size!r}"
                ) from None
        return cls.model_validate(values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` give these settings back (bar the defaults)."""
        env = {
            ENV_DISPATCH: self.dispatch,
            ENV_CANCEL_ON_DISCONNECT: "1" if self.cancel_on_disconnect else "0",
            ENV_MAX_BODY_BYTES: str(self.max_body_bytes),
        }
        if self.security_key:
            env[ENV_SECURITY_KEY] = self.security_key
        return env


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{ENV_CANCEL_ON_DISCONNECT} must be a boolean, got {text!r}")
