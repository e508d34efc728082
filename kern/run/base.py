"""The lifecycle of a run: PENDING -> RUNNING -> COMPLETED | CANCELLED | ERROR."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run is in its lifecycle. A terminal status never changes."""

    pending = "PENDING"
    running = "RUNNING"
    completed = "COMPLETED"
    cancelled = "CANCELLED"
    error = "ERROR"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.completed, RunStatus.cancelled, RunStatus.error})
