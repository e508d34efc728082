"""The control plane: where run state and cancel flags live.

One narrow interface (`ControlPlane`), implemented side by side by the
in-process memory backend (`kern.control.memory`) and Redis
(`kern.control.redis`). The methods are synchronous: that is the one
implementation. The ``a``-prefixed twins let async code call them without
blocking its loop (a thread hop for backends that do I/O, a direct call for
memory).

Rules every backend keeps:

- state moves PENDING -> RUNNING -> COMPLETED | CANCELLED | ERROR, each move a
  compare-and-set; a terminal state never changes;
- a cancel is stored first, then announced to the owner (`LocalRuns.interrupt`
  in this process, a message to the owner's channel elsewhere);
- a run's owner keeps the run's content when it stops, even after a cancel won.
"""

from __future__ import annotations

import abc
import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from pydantic import BaseModel, Field

from kern.context import RunHandle
from kern.exceptions import RunIdInUse
from kern.ids import new_owner_id
from kern.run.agent import Metrics, RunOutputEvent
from kern.run.base import RunStatus

if TYPE_CHECKING:
    from kern.control.batching import EventBatcher

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_TERMINAL_TTL = 24 * 3600.0
"""Seconds a finished run stays readable (status, content) before it expires."""

REASON_WORKER_LOST = "worker_lost"

MAX_EVENTS_PER_RUN = 100_000
"""A run's event log keeps at most this many events (the oldest go first)."""

SeqEvent = tuple[int, RunOutputEvent]
"""An event with its sequence number in the run's log (1, 2, 3 ...): the SSE ``id``."""


class RunRecord(BaseModel):
    """The stored truth about one run."""

    run_id: str
    agent_id: str
    status: RunStatus = RunStatus.pending
    session_id: str | None = None
    user_id: str | None = None
    input: str = ""
    owner: str | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    stopped: bool = False  # the owner has stopped executing and saved the content
    content: str = ""
    error: str | None = None
    cancel_reason: str | None = None
    metrics: Metrics | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What `ControlPlane.cancel` did: ``won`` is True only for the call that moved the run."""

    won: bool
    record: RunRecord | None

    @property
    def found(self) -> bool:
        return self.record is not None


class LocalRuns:
    """The runs this process executes for one control plane, by run id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[str, RunHandle] = {}

    def add(self, handle: RunHandle) -> None:
        """Track ``handle``; `RunIdInUse` if this process already runs that id."""
        with self._lock:
            if handle.run_id in self._handles:
                raise RunIdInUse(f"run {handle.run_id} is running here already")
            self._handles[handle.run_id] = handle

    def remove(self, handle: RunHandle) -> None:
        with self._lock:
            if self._handles.get(handle.run_id) is handle:
                del self._handles[handle.run_id]

    def get(self, run_id: str) -> RunHandle | None:
        with self._lock:
            return self._handles.get(run_id)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._handles)

    def interrupt(self, run_id: str, reason: str) -> bool:
        handle = self.get(run_id)
        if handle is None:
            return False
        handle.interrupt(reason)
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._handles)


class ControlPlane(abc.ABC):
    """Stores run records and carries cancels to the process that owns a run."""

    #: True when calls do network I/O, so async callers run them in a thread.
    blocking_io: bool = True

    def __init__(self, *, terminal_ttl: float = DEFAULT_TERMINAL_TTL) -> None:
        if terminal_ttl <= 0:
            raise ValueError("terminal_ttl must be positive")
        self.terminal_ttl = terminal_ttl
        self.owner_id = new_owner_id()
        self.local = LocalRuns()
        self._batcher_lock = threading.Lock()
        self._batcher: EventBatcher | None = None

    # -- the one implementation (sync) ------------------------------------------------

    @abc.abstractmethod
    def create(self, record: RunRecord) -> None:
        """Store a new PENDING run. Raises `RunIdInUse` if the id exists."""

    @abc.abstractmethod
    def start(self, run_id: str) -> RunRecord | None:
        """PENDING -> RUNNING, owned by this process. None if the run may not start."""

    def begin(self, record: RunRecord) -> RunRecord:
        """Create a run and start it here, at once (a local run). Raises `RunIdInUse`.

        Backends with I/O do both in one atomic step (one round trip).
        """
        self.create(record)
        started = self.start(record.run_id)
        if started is None:  # cancelled between the two steps: it ends without running
            stored = self.get(record.run_id)
            return stored if stored is not None else record
        return started

    @abc.abstractmethod
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
        """The owner stops: RUNNING -> ``status`` if still RUNNING, and save the content.

        Returns the stored record; its status is the one the run ends with
        (CANCELLED when a cancel won the race, whatever ``status`` asked).
        """

    @abc.abstractmethod
    def cancel(
        self, run_id: str, *, agent_id: str | None = None, reason: str = "cancelled"
    ) -> CancelResult:
        """PENDING|RUNNING -> CANCELLED (stored), then wake the owner."""

    @abc.abstractmethod
    def get(self, run_id: str) -> RunRecord | None:
        """The stored record, or None for an unknown (or expired) run."""

    @abc.abstractmethod
    def list_runs(
        self, *, status: RunStatus | None = None, agent_id: str | None = None, limit: int = 1000
    ) -> list[RunRecord]:
        """Known runs, newest first."""

    @abc.abstractmethod
    def append_events(self, run_id: str, events: Sequence[SeqEvent]) -> None:
        """Add events to the run's log (it expires with the run)."""

    def append_events_many(self, batch: dict[str, list[SeqEvent]]) -> None:
        """Append several runs' events at once (backends with I/O send one round trip)."""
        for run_id, events in batch.items():
            self.append_events(run_id, events)

    def record_event(self, run_id: str, item: SeqEvent) -> None:
        """Add one event to the run's log soon, without waiting (see `flush_events`)."""
        if not self.blocking_io:
            self.append_events(run_id, [item])
            return
        with self._batcher_lock:
            if self._batcher is None:
                from kern.control.batching import EventBatcher

                self._batcher = EventBatcher(self.append_events_many)
        self._batcher.add(run_id, item)

    async def flush_events(self) -> None:
        """Wait until every event recorded so far is in the log."""
        if self._batcher is not None:
            await self._batcher.flush()

    @abc.abstractmethod
    def read_events(self, run_id: str, after: int = 0, timeout: float = 0.0) -> list[SeqEvent]:
        """Events with a sequence number above ``after``; waits up to ``timeout`` s for one."""

    def close(self) -> None:
        """Release connections and threads (subclasses call this last)."""
        if self._batcher is not None:
            self._batcher.close()

    def wait_stopped(self, run_id: str, timeout: float, poll: float = 0.01) -> RunRecord | None:
        """Poll until the owner has stopped the run (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        record = self.get(run_id)
        while record is not None and not (record.is_terminal and record.stopped):
            if time.monotonic() >= deadline:
                break
            time.sleep(poll)
            record = self.get(run_id)
        return record

    # -- async twins ----------------------------------------------------------------

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.blocking_io:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    async def acreate(self, record: RunRecord) -> None:
        await self._call(self.create, record)

    async def astart(self, run_id: str) -> RunRecord | None:
        return await self._call(self.start, run_id)

    async def abegin(self, record: RunRecord) -> RunRecord:
        return await self._call(self.begin, record)

    async def afinish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        content: str,
        metrics: Metrics | None = None,
        error: str | None = None,
        reason: str | None = None,
    ) -> RunRecord:
        return await self._call(
            self.finish,
            run_id,
            status,
            content=content,
            metrics=metrics,
            error=error,
            reason=reason,
        )

    async def acancel(
        self, run_id: str, *, agent_id: str | None = None, reason: str = "cancelled"
    ) -> CancelResult:
        return await self._call(self.cancel, run_id, agent_id=agent_id, reason=reason)

    async def aget(self, run_id: str) -> RunRecord | None:
        return await self._call(self.get, run_id)

    async def aappend_events(self, run_id: str, events: Sequence[SeqEvent]) -> None:
        await self._call(self.append_events, run_id, events)

    async def aread_events(
        self,
        run_id: str,
        after: int = 0,
        timeout: float = 0.0,  # noqa: ASYNC109 - the twin of read_events(timeout=)
    ) -> list[SeqEvent]:
        if timeout > 0:  # it may block: never on the caller's loop
            return await asyncio.to_thread(self.read_events, run_id, after, timeout)
        return await self._call(self.read_events, run_id, after, 0.0)
