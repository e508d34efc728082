"""Appending run events to the log in batches: one round trip per tick per process.

A busy process streams many runs at once. Appending each run's events on its
own would cost a thread hop and a round trip per run per tick; `EventBatcher`
collects every run's new events and hands them to the control plane together,
from one thread, every ``interval`` seconds (or at once when a run ends and
asks for a flush).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable

from kern.control.base import SeqEvent

log = logging.getLogger("kern.events")

Batch = dict[str, list[SeqEvent]]

MAX_ATTEMPTS = 3
"""Consecutive failed writes of one batch before it is dropped (the records keep the content)."""


class EventBatcher:
    """Buffers events by run and writes them with ``append_many`` on a thread of its own."""

    def __init__(self, append_many: Callable[[Batch], None], interval: float = 0.02) -> None:
        self._append_many = append_many
        self._interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: Batch = {}
        self._waiters: list[concurrent.futures.Future[None]] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._in_flight = 0  # batches taken by the thread and not written yet

    def add(self, run_id: str, item: SeqEvent) -> None:
        """Queue one event; returns at once. After `close`, events are dropped."""
        with self._lock:
            if self._closed:
                log.warning(
                    "run %s: event %d dropped: the control plane is closed", run_id, item[0]
                )
                return
            self._pending.setdefault(run_id, []).append(item)
            self._ensure_thread()

    async def flush(self) -> None:
        """Wait until everything added so far is written (raises if it could not be)."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._closed or not (self._pending or self._waiters or self._in_flight):
                return
            self._waiters.append(future)
            self._ensure_thread()
        self._wake.set()
        await asyncio.wrap_future(future)

    def close(self) -> None:
        """Write what is pending and stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout=5)

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="kern-events", daemon=True)
            self._thread.start()

    def _written(self) -> None:
        with self._lock:
            self._in_flight = 0

    def _run(self) -> None:
        attempts = 0
        batch: Batch = {}
        waiters: list[concurrent.futures.Future[None]] = []
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            with self._lock:
                for run_id, items in self._pending.items():
                    batch.setdefault(run_id, []).extend(items)
                self._pending = {}
                waiters += self._waiters
                self._waiters = []
                closed = self._closed
                self._in_flight = 1 if batch else 0
            if batch:
                try:
                    self._append_many(batch)
                except Exception as exc:  # Redis away: keep the batch for the next tick
                    attempts += 1
                    if attempts < MAX_ATTEMPTS and not closed:
                        continue
                    log.warning("dropping the events of %d runs: %s", len(batch), exc)
                    self._written()
                    _settle(waiters, exc)
                    batch, waiters, attempts = {}, [], 0
                    continue
            self._written()
            _settle(waiters, None)
            batch, waiters, attempts = {}, [], 0
            if closed:
                return


def _settle(waiters: list[concurrent.futures.Future[None]], exc: BaseException | None) -> None:
    for waiter in waiters:
        if not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
