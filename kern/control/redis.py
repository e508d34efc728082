"""The Redis control plane: run state shared by every process with the same URL.

    create  -> EVALSHA create  + index upkeep            } one pipeline each:
    start   -> EVALSHA start   + owner's run set (+ lease) } a small constant
    finish  -> EVALSHA finish  + index upkeep            } per run, none per chunk
    cancel  -> read (lease-aware) -> EVALSHA cancel: store, then PUBLISH to the
               owner's channel; the owner's listener interrupts the run

Each process (each `RedisControlPlane`) owns one pub/sub connection, served
by a daemon thread (`kern.control.listener.Listener`) that also heartbeats the owner's lease,
re-reads the stored state of its own runs after every (re)subscribe and every
``reconcile_interval`` (the backstop for a lost message), and sweeps runs of
owners whose lease expired to ERROR ``worker_lost``. Key names and TTLs live
in `kern.control.keys`, the scripts in `kern.control.lua`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.client import Pipeline
from redis.retry import Retry

from kern.control import keys as K
from kern.control import lua
from kern.control.base import REASON_WORKER_LOST, CancelResult, ControlPlane, RunRecord, SeqEvent
from kern.control.listener import Listener
from kern.control.lua import ScriptSet, decode_record, encode_record, ms, text
from kern.exceptions import ControlPlaneUnavailable, RunIdInUse, RuntimeFailure
from kern.ids import validate_run_id
from kern.run.agent import Metrics, event_from_json
from kern.run.base import RunStatus

logger = logging.getLogger(__name__)

TRIM_EVERY = 16
"""The recent-runs index is trimmed on one create in this many (and by the listener)."""

_APPEND_BATCH = 256  # events per EVALSHA: bounds one script's argument list
_LIST_PAGE = 200  # records read per round trip by list_runs
_BLOCK_SLICE = 1.0  # longest XREAD BLOCK, kept under the client's socket timeout


class RedisControlPlane(ControlPlane):
    """Run records in Redis; a cancel from any process reaches the run's owner.

    ``client`` is a sync `redis.Redis` (its pool is shared by the caller's
    threads and the listener thread). Every key starts with ``prefix``.
    A finished run stays readable for ``terminal_ttl`` s; an owner whose
    heartbeat stops for ``lease_ttl`` s is dead and its runs end ERROR.
    """

    blocking_io = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = K.DEFAULT_PREFIX,
        terminal_ttl: float = K.TERMINAL_TTL,
        lease_ttl: float = K.LEASE_TTL,
        reconcile_interval: float = K.RECONCILE_INTERVAL,
        close_client: bool = False,
    ) -> None:
        super().__init__(terminal_ttl=terminal_ttl)
        if lease_ttl <= 0 or not 0 < reconcile_interval <= 1.0:
            raise ValueError("lease_ttl must be positive and reconcile_interval in (0, 1] s")
        self.redis = client
        self.prefix = K.validate_prefix(prefix)
        self.keys = K.Keys(self.prefix)
        self.lease_ttl = lease_ttl
        self.reconcile_interval = reconcile_interval
        self.sweep_interval = min(K.SWEEP_INTERVAL, lease_ttl / 3)
        self.scripts = ScriptSet()
        self._close_client = close_client
        self._lock = threading.Lock()
        self._incs: dict[str, str] = {}  # run id -> incarnation nonce, for runs started here
        self._unsaved: dict[str, list[str]] = {}  # run id -> finish args Redis did not take yet
        self._last_heartbeat = -float("inf")  # monotonic time of the last lease refresh
        self._creates = 0  # runs created by this client: every TRIM_EVERY-th trims the index
        self._listener: Listener | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, prefix: str | None = None, **options: Any) -> RedisControlPlane:
        """Connect to ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        The prefix defaults to ``KERN_REDIS_PREFIX``, else ``kern``. ``options``
        go to `redis.Redis.from_url`; transient errors are retried with backoff.
        """
        settings: dict[str, Any] = {
            "socket_timeout": 5.0,
            "socket_connect_timeout": 2.0,
            "health_check_interval": 30,
            "retry": Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=5),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        }
        settings.update(options)
        client = redis.Redis.from_url(url, **settings)
        chosen = prefix or os.environ.get(K.ENV_PREFIX) or K.DEFAULT_PREFIX
        return cls(client, prefix=chosen, close_client=True)

    # -- transitions ----------------------------------------------------------------

    def create(self, record: RunRecord) -> None:
        run_id = validate_run_id(record.run_id)
        inc = uuid.uuid4().hex[:16]
        fields = encode_record(record.model_copy(update={"status": RunStatus.pending}), inc=inc)
        pending_ms = ms(K.PENDING_TTL)

        def build(pipe: Pipeline) -> None:
            self.scripts.create(pipe, self._run_keys(run_id), [inc, pending_ms, *fields])
            self._add_to_recent(pipe, run_id, record.created_at)

        with self._guard("create a run"):
            created = self._execute(build)[0]
        if not created:
            raise RunIdInUse(f"run {run_id} exists already")

    def begin(self, record: RunRecord) -> RunRecord:
        """Create and start a local run in one script and one round trip."""
        run_id = validate_run_id(record.run_id)
        self._ensure_listener()
        owner = self.owner_id
        inc = uuid.uuid4().hex[:16]
        running = record.model_copy(
            update={"status": RunStatus.running, "owner": owner, "started_at": time.time()}
        )
        stale_lease = time.monotonic() - self._last_heartbeat > self.lease_ttl / 3

        def build(pipe: Pipeline) -> None:
            if stale_lease:  # the lease must exist before any reader sees RUNNING
                self._add_heartbeat(pipe)
            pipe.sadd(self.keys.owner_runs(owner), run_id)
            pipe.zadd(self.keys.active, {run_id: running.started_at or time.time()})
            self._add_to_recent(pipe, run_id, record.created_at)
            self.scripts.begin(
                pipe, [self.keys.run(run_id)], [inc, *encode_record(running, inc=inc)]
            )

        with self._guard("begin a run"):
            began = self._execute(build)[-1]
            if stale_lease:
                self._last_heartbeat = time.monotonic()
            if not began:  # the id is taken: leave the run that holds it alone
                self._execute(
                    lambda p: [
                        p.srem(self.keys.owner_runs(owner), run_id),
                        p.zrem(self.keys.active, run_id),
                    ]
                )
                raise RunIdInUse(f"run {run_id} exists already")
        with self._lock:
            self._incs[run_id] = inc
        return running

    def _add_to_recent(self, pipe: Pipeline, run_id: str, created_at: float) -> None:
        # NX: if the id is refused, the run that holds it keeps its place.
        pipe.zadd(self.keys.recent, {run_id: created_at}, nx=True)
        self._creates += 1
        if (self._creates - 1) % TRIM_EVERY == 0:  # the index is trimmed often, not at every run
            pipe.zremrangebyrank(self.keys.recent, 0, -K.MAX_RECENT_RUNS - 1)

    def start(self, run_id: str) -> RunRecord | None:
        self._ensure_listener()
        owner = self.owner_id
        stale_lease = time.monotonic() - self._last_heartbeat > self.lease_ttl / 3

        def build(pipe: Pipeline) -> None:
            if stale_lease:  # the lease must exist before any reader sees RUNNING
                self._add_heartbeat(pipe)
            pipe.sadd(self.keys.owner_runs(owner), run_id)
            pipe.zadd(self.keys.active, {run_id: time.time()})
            self.scripts.start(pipe, [self.keys.run(run_id)], [owner, repr(time.time())])

        with self._guard("start a run"):
            raw = self._execute(build)[-1]
            if stale_lease:
                self._last_heartbeat = time.monotonic()
            record = decode_record(raw, run_id)
            if record is None:  # not ours to run: undo our own index entry
                # (The active entry may be another owner's: listing prunes strays.)
                self.redis.srem(self.keys.owner_runs(owner), run_id)
                return None
        with self._lock:
            self._incs[run_id] = text(lua.as_dict(raw).get("inc", ""))
        return record

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
        with self._lock:
            inc = self._incs.pop(run_id, "")
        handle = self.local.get(run_id)
        now = repr(time.time())
        metrics_json = metrics.model_dump_json() if metrics is not None else ""
        agent_id = handle.agent_id if handle else ""
        args = [status.value, now, ms(self.terminal_ttl), self.owner_id, inc, run_id, agent_id]
        args += [content, metrics_json, error or "", reason or ""]

        try:
            with self._guard("record the end of a run"):
                reply = self._execute(partial(self._add_finish, run_id=run_id, args=args))[0]
        except ControlPlaneUnavailable:
            # Keep the end and retry it from the listener: the run must not stay
            # RUNNING in Redis while this (live, heartbeating) process forgets it.
            with self._lock:
                self._unsaved[run_id] = args
            raise
        record = decode_record(reply[1], run_id) if reply[0] else None
        if record is None:  # the id now belongs to a newer incarnation: leave it alone
            logger.warning("kern: run %s was replaced in Redis; its end is not stored", run_id)
            record = RunRecord(
                run_id=run_id,
                agent_id=agent_id,
                status=status,
                content=content,
                metrics=metrics,
                error=error,
                cancel_reason=reason,
                stopped=True,
            )
        return record

    def _add_finish(self, pipe: Pipeline, run_id: str, args: list[str]) -> None:
        self.scripts.finish(pipe, self._run_keys(run_id), args)
        pipe.srem(self.keys.owner_runs(self.owner_id), run_id)
        pipe.zrem(self.keys.active, run_id)

    def _save_unsaved(self) -> None:
        """Store the ends of runs whose finish failed while Redis was unreachable."""
        with self._lock:
            unsaved = dict(self._unsaved)
        if not unsaved:
            return

        def build(pipe: Pipeline) -> None:
            for run_id, args in unsaved.items():
                self._add_finish(pipe, run_id, args)

        self._execute(build)
        with self._lock:
            for run_id in unsaved:
                self._unsaved.pop(run_id, None)
        logger.warning("kern: stored the end of %d run(s) after Redis came back", len(unsaved))

    def cancel(
        self, run_id: str, *, agent_id: str | None = None, reason: str = "cancelled"
    ) -> CancelResult:
        with self._guard("cancel a run"):
            current = self._read(run_id)
            if current is None or (agent_id is not None and current.agent_id != agent_id):
                return CancelResult(won=False, record=None)
            if current.is_terminal:
                return CancelResult(won=False, record=current)
            token = uuid.uuid4().hex  # lets a re-sent cancel know it was the winner
            args = [agent_id or "", reason, repr(time.time()), ms(self.terminal_ttl)]
            args += [self.owner_id, token, self.keys.channel_prefix]

            def build(pipe: Pipeline) -> None:
                self.scripts.cancel(pipe, self._run_keys(run_id), args)
                pipe.zrem(self.keys.active, run_id)

            reply = self._execute(build)[0]
        record = decode_record(reply[1], run_id) if len(reply) > 1 else None
        won = reply[0] == 1
        if won:  # stored (and announced to a remote owner); a local owner is woken here
            self.local.interrupt(run_id, reason)
        return CancelResult(won=won, record=record)

    # -- reading --------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        with self._guard("read a run"):
            return self._read(run_id)

    def list_runs(
        self, *, status: RunStatus | None = None, agent_id: str | None = None, limit: int = 1000
    ) -> list[RunRecord]:
        with self._guard("list runs"):
            found: list[RunRecord] = []
            ids = self._index_ids(active_only=status == RunStatus.running)
            for start in range(0, len(ids), _LIST_PAGE):
                page = self._read_many(ids[start : start + _LIST_PAGE])
                found.extend(
                    r
                    for r in page
                    if (status is None or r.status == status)
                    and (agent_id is None or r.agent_id == agent_id)
                )
                if len(found) >= limit:
                    break
        found.sort(key=lambda r: r.created_at, reverse=True)
        return found[:limit]

    def append_events(self, run_id: str, events: Sequence[SeqEvent]) -> None:
        self.append_events_many({run_id: list(events)})

    def append_events_many(self, batch: dict[str, list[SeqEvent]]) -> None:
        """Every run's events in one pipeline: one round trip, one script call per run."""
        head: list[str] = [str(K.MAX_EVENTS), ms(self.terminal_ttl)]

        def build(pipe: Pipeline) -> None:
            for run_id, events in batch.items():
                keys = self._run_keys(run_id)
                for start in range(0, len(events), _APPEND_BATCH):
                    args = list(head)
                    for seq, event in events[start : start + _APPEND_BATCH]:
                        args += [f"{seq}-0", event.to_json()]
                    self.scripts.append(pipe, keys, args)

        if any(batch.values()):
            with self._guard("append run events"):
                self._execute(build)

    def read_events(self, run_id: str, after: int = 0, timeout: float = 0.0) -> list[SeqEvent]:
        key = self.keys.events(run_id)
        deadline = time.monotonic() + timeout
        with self._guard("read run events"):
            entries: Any = self.redis.xrange(key, min=f"{after + 1}-0")
            while not entries and (remaining := deadline - time.monotonic()) > 0:
                block = max(1, int(min(remaining, _BLOCK_SLICE) * 1000))
                reply: Any = self.redis.xread({key: f"{after}-0"}, block=block)
                entries = reply[0][1] if reply else []
        return [(lua.seq_of(i), event_from_json(lua.stream_field(f, "e"))) for i, f in entries]

    # -- leases and sweeping ----------------------------------------------------------

    def sweep(self) -> int:
        """End the runs of owners whose lease expired (ERROR ``worker_lost``).

        Called by every listener thread each ``sweep_interval``; any process
        may call it. Returns how many runs this call moved to ERROR.
        """
        with self._guard("sweep for lost workers"):
            cutoff = time.time() - self.lease_ttl
            stale = self.redis.zrangebyscore(self.keys.owners, "-inf", cutoff, 0, 100)
            dead = self._dead_owners(text(o) for o in stale if text(o) != self.owner_id)
            if not dead:
                return 0
            members = self._execute(lambda p: [p.smembers(self.keys.owner_runs(o)) for o in dead])
            runs = [(o, text(r)) for o, ids in zip(dead, members, strict=True) for r in ids]
            lost = sum(moved for moved, _ in self._end_lost(runs).values())
            self._execute(
                lambda p: [
                    p.delete(*map(self.keys.owner_runs, dead)),
                    p.zrem(self.keys.owners, *dead),
                ]
            )
        if lost:
            logger.warning("kern: %d run(s) of dead owners ended %s", lost, REASON_WORKER_LOST)
        return lost

    def trim_indexes(self) -> None:
        """Drop recent-run entries of runs created too long ago to be still readable."""
        oldest = time.time() - (K.PENDING_TTL + self.terminal_ttl)
        with self._guard("trim run indexes"):
            self.redis.zremrangebyscore(self.keys.recent, "-inf", oldest)

    def close(self) -> None:
        """Stop the listener thread, give up the lease, and close an owned client."""
        if self._closed:
            return
        self._closed = True
        super().close()  # the events still batched go out first
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
            with contextlib.suppress(redis.RedisError):
                self._release_lease()
        if self._close_client:
            self.redis.close()

    # -- internals ------------------------------------------------------------------

    def _run_keys(self, run_id: str) -> list[str]:
        return [self.keys.run(run_id), self.keys.events(run_id)]

    def _execute(self, build: Any) -> list[Any]:
        return self.scripts.execute(self.redis, build)

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turn redis-py errors into kern's: `ControlPlaneUnavailable` when Redis cannot
        be reached (worth retrying), `RuntimeFailure` when it refused the command."""
        try:
            yield
        except redis.RedisError as exc:
            where = f"Redis at {lua.describe(self.redis)}"
            if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.ReadOnlyError):
                raise ControlPlaneUnavailable(
                    f"cannot {doing}: {where} is unreachable ({exc})"
                ) from exc
            raise RuntimeFailure(f"cannot {doing}: {where} refused it ({exc})") from exc

    def _read(self, run_id: str) -> RunRecord | None:
        return next(iter(self._read_many([run_id])), None)

    def _read_many(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Records of ``run_ids`` with leases settled; a listing also prunes the indexes."""
        raws = self._execute(lambda p: [p.hgetall(self.keys.run(i)) for i in run_ids])
        decoded = [(i, decode_record(raw, i)) for i, raw in zip(run_ids, raws, strict=True)]
        records = [r for _, r in decoded if r is not None]
        if len(run_ids) > 1:  # listing: entries of vanished or ended runs leave the indexes
            gone = [i for i, r in decoded if r is None]
            ended = [r.run_id for r in records if r.is_terminal]

            def prune(pipe: Pipeline) -> None:
                if gone:
                    pipe.zrem(self.keys.recent, *gone)
                if gone or ended:
                    pipe.zrem(self.keys.active, *gone, *ended)

            self._execute(prune)
        return self._settle_leases(records)

    def _settle_leases(self, records: list[RunRecord]) -> list[RunRecord]:
        """Move runs of owners whose lease expired to ERROR (or to stopped, if already ended)."""
        suspects = {
            r.owner
            for r in records
            if r.owner
            and r.owner != self.owner_id
            and (r.status == RunStatus.running or (r.is_terminal and not r.stopped))
        }
        dead = set(self._dead_owners(o for o in suspects if o))
        if not dead:
            return records
        lost = [(r.owner, r.run_id) for r in records if r.owner and r.owner in dead]
        ended = self._end_lost(lost)
        return [ended[r.run_id][1] if r.run_id in ended else r for r in records]

    def _dead_owners(self, owners: Iterable[str]) -> list[str]:
        candidates = list(owners)
        if not candidates:
            return []
        alive = self._execute(lambda p: [p.exists(self.keys.lease(o)) for o in candidates])
        return [o for o, up in zip(candidates, alive, strict=True) if not up]

    def _end_lost(self, runs: Sequence[tuple[str, str]]) -> dict[str, tuple[int, RunRecord]]:
        """The lost script on (dead owner, run id) pairs: run id -> (moved to ERROR, record)."""
        if not runs:
            return {}
        args = [repr(time.time()), ms(self.terminal_ttl), REASON_WORKER_LOST]

        def build(pipe: Pipeline) -> None:
            for owner, run_id in runs:
                self.scripts.lost(pipe, self._run_keys(run_id), [owner, *args])
            pipe.zrem(self.keys.active, *(run_id for _, run_id in runs))

        replies = self._execute(build)[:-1]
        out: dict[str, tuple[int, RunRecord]] = {}
        for (_, run_id), (moved, raw) in zip(runs, replies, strict=True):
            if (record := decode_record(raw, run_id)) is not None:
                out[run_id] = (int(moved), record)
        return out

    def _index_ids(self, *, active_only: bool) -> list[str]:
        """Run ids from the indexes, newest first."""

        def build(pipe: Pipeline) -> None:
            pipe.zrange(self.keys.active, 0, -1, withscores=True)
            if not active_only:
                pipe.zrange(self.keys.recent, 0, -1, withscores=True)

        scored: dict[str, float] = {}
        for entries in self._execute(build):
            scored.update((text(i), float(s)) for i, s in entries)
        return sorted(scored, key=lambda i: scored[i], reverse=True)

    def _add_heartbeat(self, pipe: Pipeline) -> None:
        pipe.set(self.keys.lease(self.owner_id), "1", px=lua.ms_int(self.lease_ttl))
        pipe.zadd(self.keys.owners, {self.owner_id: time.time()})

    def _heartbeat(self) -> None:
        self._execute(self._add_heartbeat)
        self._last_heartbeat = time.monotonic()

    def _release_lease(self) -> None:
        """On close: runs still RUNNING here are left for the sweepers to end."""
        owner = self.owner_id
        lease, runs = self.keys.lease(owner), self.keys.owner_runs(owner)
        remaining = self._execute(lambda p: [p.delete(lease), p.scard(runs)])[1]
        if not remaining:
            self.redis.zrem(self.keys.owners, owner)

    def _ensure_listener(self) -> None:
        if self._listener is None and not self._closed:
            with self._lock:
                if self._listener is None:
                    self._listener = Listener(self)
                    self._listener.start()

    def _reconcile(self) -> None:
        """Re-read our runs in one round trip: interrupt the ended, restore the vanished."""
        with self._lock:
            started = {i: self._incs[i] for i in self.local.ids() if i in self._incs}
        if not started:
            return
        ids = list(started)
        fields = ["status", "inc", "cancel_reason", "error"]
        rows = self._execute(lambda p: [p.hmget(self.keys.run(i), fields) for i in ids])
        vanished: list[str] = []
        for run_id, (status, inc, reason, error) in zip(ids, rows, strict=True):
            if status is None:
                vanished.append(run_id)
            elif text(inc) != started[run_id]:
                self.local.interrupt(run_id, "record_replaced")
            elif RunStatus(text(status)).is_terminal:
                why = reason or error
                self.local.interrupt(run_id, text(why) if why else text(status).lower())
        if vanished:
            self._restore(vanished, started)

    def _restore(self, run_ids: Sequence[str], incs: dict[str, str]) -> None:
        """Put back the RUNNING records Redis lost (a restart without persistence)."""
        now = time.time()

        def build(pipe: Pipeline) -> None:
            self._add_heartbeat(pipe)
            for run_id in run_ids:
                handle = self.local.get(run_id)
                record = RunRecord(
                    run_id=run_id,
                    agent_id=handle.agent_id if handle else "",
                    status=RunStatus.running,
                    owner=self.owner_id,
                    created_at=now,
                    started_at=now,
                )
                fields = encode_record(record, incs[run_id])
                self.scripts.restore(pipe, [self.keys.run(run_id)], fields)
                pipe.zadd(self.keys.active, {run_id: now}, nx=True)
                pipe.zadd(self.keys.recent, {run_id: now}, nx=True)
                pipe.sadd(self.keys.owner_runs(self.owner_id), run_id)

        self._execute(build)
        logger.warning("kern: restored %d run record(s) missing from Redis", len(run_ids))

    def _on_cancel_message(self, data: bytes | str) -> None:
        run_id, inc, reason = text(data).split("\n", 2)
        with self._lock:
            mine = self._incs.get(run_id)
        if mine is not None and mine == inc:  # a late message for an older incarnation is ignored
            self.local.interrupt(run_id, reason)
        elif mine is None and self.local.get(run_id) is not None:
            # Started here, but start() has not noted its nonce yet: ask the record.
            status = self.redis.hget(self.keys.run(run_id), "status")
            if status is not None and RunStatus(text(status)).is_terminal:
                self.local.interrupt(run_id, reason)
