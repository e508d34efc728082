"""The run queue on Redis Streams: API servers and scripts submit, workers take.

One stream per agent, one consumer group (``workers``) over it. Submitting
stores the PENDING run record first, then adds an entry naming the run. A
worker reads entries for its agents, starts each run (a compare-and-set that
fails for a run cancelled while it waited, which is then dropped), and
acknowledges and deletes the entry when the run has ended, so the stream only
ever holds runs not yet finished.

Entries a dead worker had read are claimed by a live one after
``CLAIM_IDLE_MS``: a run that never started is started then; one that had
started is never run again (its record ends ERROR ``worker_lost`` through the
lease sweep).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from kern.control import keys
from kern.control.base import RunRecord
from kern.exceptions import ControlPlaneUnavailable, KernError

if TYPE_CHECKING:
    from kern.control.redis import RedisControlPlane

GROUP = "workers"
CLAIM_IDLE_MS = 30_000
"""An entry read this long ago and not acknowledged may belong to a dead worker."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued run, as a worker reads it."""

    agent_id: str
    entry_id: str
    run_id: str


class RunQueue:
    """Submit runs to workers, and take them as a worker."""

    def __init__(self, control: RedisControlPlane) -> None:
        self.control = control
        self.redis: redis.Redis = control.redis
        self.prefix = control.prefix
        self._groups: set[str] = set()

    def stream(self, agent_id: str) -> str:
        return keys.queue(self.prefix, agent_id)

    def submit(self, record: RunRecord) -> None:
        """Store the PENDING run, then enqueue it. Raises `RunIdInUse` for a taken id."""
        self.control.create(record)
        try:
            self.redis.xadd(self.stream(record.agent_id), {"run_id": record.run_id})
        except redis.RedisError as exc:
            # No worker will ever see it: end the record now rather than leave it
            # PENDING for a day (and its id taken).
            with contextlib.suppress(KernError):
                self.control.cancel(record.run_id, reason="enqueue_failed")
            raise ControlPlaneUnavailable(f"could not enqueue run {record.run_id}: {exc}") from exc

    def ensure_groups(self, agent_ids: list[str]) -> None:
        for agent_id in agent_ids:
            stream = self.stream(agent_id)
            if stream in self._groups:
                continue
            try:
                self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(stream)

    def read(self, agent_ids: list[str], consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries for ``agent_ids``, at most ``count``, waiting up to ``block_ms``."""
        self.ensure_groups(agent_ids)
        streams: dict[Any, Any] = {self.stream(a): ">" for a in agent_ids}
        reply: Any = self.redis.xreadgroup(GROUP, consumer, streams, count=count, block=block_ms)
        return self._entries(agent_ids, reply)

    def claim(
        self, agent_ids: list[str], consumer: str, idle_ms: int = CLAIM_IDLE_MS, count: int = 100
    ) -> list[Entry]:
        """Entries other workers read over ``idle_ms`` ago and never acknowledged."""
        self.ensure_groups(agent_ids)
        found: list[Entry] = []
        for agent_id in agent_ids:
            reply: Any = self.redis.xautoclaim(
                self.stream(agent_id), GROUP, consumer, idle_ms, "0-0", count=count
            )
            for entry_id, fields in reply[1]:
                if fields:
                    found.append(_entry(agent_id, entry_id, fields))
        return found

    def done(self, entry: Entry) -> None:
        """The run has ended (or was dropped): forget the entry."""
        stream = self.stream(entry.agent_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(stream, GROUP, entry.entry_id)
        pipe.xdel(stream, entry.entry_id)
        pipe.execute()

    def depth(self, agent_id: str) -> int:
        return int(self.redis.xlen(self.stream(agent_id)))

    def _entries(self, agent_ids: list[str], reply: Any) -> list[Entry]:
        by_stream = {self.stream(a): a for a in agent_ids}
        out: list[Entry] = []
        for stream, items in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in items:
                out.append(_entry(by_stream[name], entry_id, fields))
        return out


def _entry(agent_id: str, entry_id: Any, fields: Any) -> Entry:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    decoded = {text(k): text(v) for k, v in fields.items()}
    return Entry(agent_id=agent_id, entry_id=text(entry_id), run_id=decoded["run_id"])
