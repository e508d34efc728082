"""Every error kern raises, under one root.

KernError
├── UsageError                the caller's mistake: fix the call or the config
│   ├── ConfigError           bad settings (URL, app path, options)
│   ├── InvalidRunId          a run id kern will not store (empty, glob or control chars)
│   ├── RunIdInUse            a run id that is already taken
│   └── UnknownAgent          no agent with that id is served here
└── RuntimeFailure            something failed while doing a valid thing
    ├── ControlPlaneUnavailable   the control plane (Redis) cannot be reached
    ├── ModelError            the model provider failed or answered nonsense
    └── ToolError             a tool raised
"""

from __future__ import annotations


class KernError(Exception):
    """Root of every exception kern raises."""


class UsageError(KernError):
    """The caller asked for something invalid."""


class ConfigError(UsageError):
    """Settings are missing or malformed."""


class InvalidRunId(UsageError):
    """A run id that kern refuses to store."""


class RunIdInUse(UsageError):
    """A run with this id exists already."""


class UnknownAgent(UsageError):
    """No agent with this id is served by this process or deployment."""


class RuntimeFailure(KernError):
    """A valid operation failed at run time."""


class ControlPlaneUnavailable(RuntimeFailure):
    """The control plane (Redis) could not be reached."""


class RunNotStarted(RuntimeFailure):
    """A run that may not start here: it is not PENDING and has not ended."""


class ModelError(RuntimeFailure):
    """The model provider failed."""


class ToolError(RuntimeFailure):
    """A tool raised an exception."""
