"""The control plane: run state and cancel flags (memory or Redis)."""

from __future__ import annotations

import os
import threading

from kern.control.base import CancelResult, ControlPlane, RunRecord
from kern.control.memory import MemoryControlPlane

ENV_REDIS_URL = "KERN_REDIS_URL"

_lock = threading.Lock()
_default: ControlPlane | None = None


def control_plane_from_env() -> ControlPlane:
    """Redis when ``KERN_REDIS_URL`` is set, else a new in-process memory plane."""
    url = os.environ.get(ENV_REDIS_URL)
    if url:
        from kern.control.redis import RedisControlPlane

        plane: ControlPlane = RedisControlPlane.from_url(url)
        return plane
    return MemoryControlPlane()


def default_control_plane() -> ControlPlane:
    """The process-wide control plane that agents use unless given one."""
    global _default
    with _lock:
        if _default is None:
            _default = control_plane_from_env()
        return _default


__all__ = [
    "ENV_REDIS_URL",
    "CancelResult",
    "ControlPlane",
    "MemoryControlPlane",
    "RunRecord",
    "control_plane_from_env",
    "default_control_plane",
]
