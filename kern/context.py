"""What a running run exposes: the handle its owner interrupts, the context tools see."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

from kern.exceptions import KernError


class RunCancelled(KernError):
    """Raised inside a run (or by `RunContext.raise_if_cancelled`) once it was cancelled."""


_interrupt_lock = threading.Lock()


@dataclass(eq=False)
class RunHandle:
    """The owner's grip on one executing run.

    `interrupt` may be called from any thread: it sets a local flag (what the
    per-chunk hot path reads, no I/O) and cancels the run's task in its own loop,
    which wakes whatever the run is awaiting (a silent model, a tool).
    """

    run_id: str
    agent_id: str
    loop: asyncio.AbstractEventLoop
    task: asyncio.Task[object] | None = None
    reason: str | None = None
    closing: bool = False  # the run is saving its end: interrupts no longer cancel the task
    outside_cancelled: bool = False  # the task was cancelled by someone other than kern
    cancelled: threading.Event = field(default_factory=threading.Event)
    _own_cancels: int = 0

    @property
    def cancel_requested(self) -> bool:
        return self.cancelled.is_set()

    def interrupt(self, reason: str = "cancelled") -> None:
        with _interrupt_lock:  # two threads may interrupt at once: one of them acts
            if self.cancelled.is_set():
                return
            self.reason = reason
            self.cancelled.set()
        # A closed loop means the run is over anyway.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._cancel_task)

    def _cancel_task(self) -> None:
        if self.task is not None and not self.task.done() and not self.closing:
            self._own_cancels += 1
            self.task.cancel(f"kern: run {self.run_id} {self.reason}")

    def hold_interrupts(self) -> bool:
        """Stop further task cancels; True if one already landed and is pending.

        Called on the run's loop when the run has seen the flag and is about to
        unwind by itself: a task cancel thrown into that unwinding (while model
        streams are being closed) would cut their cleanup short.
        """
        self.closing = True
        return self._own_cancels > 0

    def consume_own_cancel(self) -> bool:
        """True if a CancelledError came from `interrupt`, not from outside."""
        if self._own_cancels and self.task is not None:
            self._own_cancels -= 1
            self.task.uncancel()
            return True
        return False


class RunContext:
    """Handed to tools that ask for it (a parameter annotated ``RunContext``).

    A long tool polls `cancelled` or waits with `wait_cancelled` to stop early.
    """

    def __init__(self, handle: RunHandle, session_id: str | None, user_id: str | None) -> None:
        self._handle = handle
        self.session_id = session_id
        self.user_id = user_id

    @property
    def run_id(self) -> str:
        return self._handle.run_id

    @property
    def agent_id(self) -> str:
        return self._handle.agent_id

    @property
    def cancelled(self) -> bool:
        return self._handle.cancel_requested

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block (a sync tool's thread) up to ``timeout`` s; True once cancelled."""
        return self._handle.cancelled.wait(timeout)

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise RunCancelled(f"run {self.run_id} was cancelled")
