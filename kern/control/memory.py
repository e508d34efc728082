"""The in-process control plane: the embedded default, no server needed.

Every transition happens under one lock, so a cancel racing a completion has
exactly one winner. Finished runs expire after ``terminal_ttl`` seconds, and at
most ``max_terminal`` of them are kept (oldest dropped first).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from kern.control.base import (
    MAX_EVENTS_PER_RUN,
    CancelResult,
    ControlPlane,
    RunRecord,
    SeqEvent,
)
from kern.exceptions import RunIdInUse
from kern.ids import validate_run_id
from kern.run.agent import Metrics
from kern.run.base import RunStatus

DEFAULT_MAX_TERMINAL = 100_000


class MemoryControlPlane(ControlPlane):
    """Run records in a dict; cancels reach runs of this process only."""

    blocking_io = False

    def __init__(
        self, *, terminal_ttl: float = 24 * 3600.0, max_terminal: int = DEFAULT_MAX_TERMINAL
    ) -> None:
        super().__init__(terminal_ttl=terminal_ttl)
        self.max_terminal = max_terminal
        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        self._records: dict[str, RunRecord] = {}
        self._events: dict[str, deque[SeqEvent]] = {}
        self._expiry: deque[tuple[float, str]] = deque()  # terminal runs, in the order they ended

    def __len__(self) -> int:
        with self._lock:
            self._prune(time.time())
            return len(self._records)

    def create(self, record: RunRecord) -> None:
        validate_run_id(record.run_id)
        with self._lock:
            self._prune(time.time())
            if record.run_id in self._records:
                raise RunIdInUse(f"run {record.run_id} exists already")
            self._records[record.run_id] = record.model_copy(update={"status": RunStatus.pending})

    def start(self, run_id: str) -> RunRecord | None:
        with self._lock:
            record = self._records.get(run_id)
            if record is None or record.status != RunStatus.pending:
                return None
            record.status = RunStatus.running
            record.owner = self.owner_id
            record.started_at = time.time()
            return record.model_copy()

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        content: str,
        metrics: Metrics | None = None,
        error: str | None = None,
        reason: str | None = None,
    ) -> RunRecord:
        if not status.is_terminal:
            raise ValueError(f"finish needs a terminal status, not {status}")
        now = time.time()
        with self._lock:
            record = self._records.get(run_id)
            if record is None:  # expired or evicted mid-run: keep what we know
                record = RunRecord(run_id=run_id, agent_id="", status=RunStatus.running)
                self._records[run_id] = record
            if not record.is_terminal:
                record.status = status
                record.ended_at = now
                record.error = error
                if status == RunStatus.cancelled:
                    record.cancel_reason = reason
                self._expiry.append((now + self.terminal_ttl, run_id))
            record.content = content
            record.metrics = metrics
            record.stopped = True
            self._prune(now)
            return record.model_copy()

    def cancel(
        self, run_id: str, *, agent_id: str | None = None, reason: str = "cancelled"
    ) -> CancelResult:
        now = time.time()
        with self._lock:
            record = self._records.get(run_id)
            if record is None or (agent_id is not None and record.agent_id != agent_id):
                return CancelResult(won=False, record=None)
            if record.is_terminal:
                return CancelResult(won=False, record=record.model_copy())
            was_pending = record.status == RunStatus.pending
            record.status = RunStatus.cancelled
            record.cancel_reason = reason
            record.ended_at = now
            record.stopped = was_pending  # a run that never started has nothing to stop
            self._expiry.append((now + self.terminal_ttl, run_id))
            snapshot = record.model_copy()
        # Stored first (above), then the owner is woken.
        self.local.interrupt(run_id, reason)
        return CancelResult(won=True, record=snapshot)

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            self._prune(time.time())
            record = self._records.get(run_id)
            return None if record is None else record.model_copy()

    def list_runs(
        self, *, status: RunStatus | None = None, agent_id: str | None = None, limit: int = 1000
    ) -> list[RunRecord]:
        with self._lock:
            self._prune(time.time())
            found = [
                r.model_copy()
                for r in self._records.values()
                if (status is None or r.status == status)
                and (agent_id is None or r.agent_id == agent_id)
            ]
        found.sort(key=lambda r: r.created_at, reverse=True)
        return found[:limit]

    def append_events(self, run_id: str, events: Sequence[SeqEvent]) -> None:
        with self._appended:
            log = self._events.get(run_id)
            if log is None:
                log = self._events[run_id] = deque(maxlen=MAX_EVENTS_PER_RUN)
            log.extend(events)
            self._appended.notify_all()

    def read_events(self, run_id: str, after: int = 0, timeout: float = 0.0) -> list[SeqEvent]:
        deadline = time.monotonic() + timeout
        with self._appended:
            while True:
                log = self._events.get(run_id, ())
                found = [item for item in log if item[0] > after]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                self._appended.wait(remaining)

    def _prune(self, now: float) -> None:
        expiry = self._expiry
        while expiry and (expiry[0][0] <= now or len(expiry) > self.max_terminal):
            _, run_id = expiry.popleft()
            record = self._records.get(run_id)
            if record is not None and record.is_terminal:
                del self._records[run_id]
                self._events.pop(run_id, None)
