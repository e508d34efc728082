"""The Redis control plane's listener: one pub/sub connection per process, and its duties.

A daemon thread subscribed to the process's own cancel channel. It never dies
on a connection error (it logs, backs off and resubscribes), re-reads the
stored state of every run the process owns after each (re)subscribe, and runs
the periodic duties: lease heartbeat, reconciliation (<= 1 s), retrying
unsaved run ends, sweeping dead owners' runs, trimming the indexes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from kern.control import keys as K
from kern.control.lua import text

if TYPE_CHECKING:
    from kern.control.redis import RedisControlPlane

logger = logging.getLogger("kern.control.redis")


class Listener:
    """The process's one pub/sub connection, and its periodic duties, on a daemon thread."""

    MAX_BACKOFF = 5.0

    def __init__(self, plane: RedisControlPlane) -> None:
        self.plane = plane
        self.tick = min(0.1, plane.reconcile_interval, plane.lease_ttl / 3)
        self._stop = threading.Event()
        self._backoff = 0.05
        self._due = dict.fromkeys(("heartbeat", "reconcile", "unsaved", "sweep", "trim"), 0.0)
        self._thread = threading.Thread(
            target=self._run, name=f"kern-redis-listener-{plane.owner_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except Exception as exc:  # never die silently: log, back off, resubscribe
                logger.warning(
                    "kern: Redis listener error (%s: %s); resubscribing in %.2f s",
                    type(exc).__name__,
                    exc,
                    self._backoff,
                )
                self._stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)

    def _serve(self) -> None:
        plane = self.plane
        pubsub = plane.redis.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(plane.keys.channel(plane.owner_id))
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=self.tick)
                if message is not None:
                    self._handle(message)
                self._periodic()
        finally:
            pubsub.close()

    def _handle(self, message: dict[str, Any]) -> None:
        kind = text(message["type"])
        if kind == "subscribe":
            # Also after redis-py's own silent reconnects: messages sent while we
            # were away are lost, so re-read what is stored now.
            self._backoff = 0.05
            self.plane._reconcile()
            self._due["reconcile"] = time.monotonic() + self.plane.reconcile_interval
        elif kind == "message":
            try:
                self.plane._on_cancel_message(message["data"])
            except ValueError:
                logger.warning("kern: ignored a malformed cancel message %r", message["data"])

    def _periodic(self) -> None:
        plane, now = self.plane, time.monotonic()
        duties = (
            ("heartbeat", plane.lease_ttl / 3, plane._heartbeat),
            ("reconcile", plane.reconcile_interval, plane._reconcile),
            ("unsaved", plane.reconcile_interval, plane._save_unsaved),
            ("sweep", plane.sweep_interval, plane.sweep),
            ("trim", K.TRIM_INTERVAL, plane.trim_indexes),
        )
        for name, every, duty in duties:
            if now >= self._due[name]:
                self._due[name] = now + every
                duty()
