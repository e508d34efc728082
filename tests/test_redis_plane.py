"""The Redis control plane beyond the shared contract: keys, TTLs, pub/sub, leases.

Each test runs on fakeredis and on a real Redis. Two `RedisControlPlane`
instances with their own clients stand for two processes (each has its own
owner id, lease and pub/sub connection).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from redis.crc import key_slot
from redis.retry import Retry
from redis_support import wait_for

from kern.agent import Agent
from kern.context import RunHandle
from kern.control import keys
from kern.control import redis as redis_plane
from kern.control.base import REASON_WORKER_LOST, RunRecord
from kern.control.redis import RedisControlPlane
from kern.exceptions import ControlPlaneUnavailable
from kern.models.offline import OfflineModel
from kern.run.agent import RunCancelledEvent, RunContentEvent, RunEvent
from kern.run.base import RunStatus
from kern.testing.redis_server import free_port

BACKENDS = ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)]

MakePlane = Callable[..., RedisControlPlane]


@pytest.fixture(params=BACKENDS)
def make_plane(request: pytest.FixtureRequest) -> Iterator[MakePlane]:
    """Planes on one store (fakeredis server or real Redis), one client each."""
    made: list[RedisControlPlane] = []
    server = fakeredis.FakeServer()
    real = request.param == "redis"
    prefix = request.getfixturevalue("redis_prefix") if real else "kt-fake"
    url = request.getfixturevalue("redis_url") if real else ""

    def make(**options: Any) -> RedisControlPlane:
        client = redis.Redis.from_url(url) if real else fakeredis.FakeRedis(server=server)
        plane = RedisControlPlane(client, prefix=prefix, close_client=True, **options)
        made.append(plane)
        return plane

    yield make
    for plane in made:
        plane.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def new_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


def owned_run(plane: RedisControlPlane, loop: asyncio.AbstractEventLoop) -> RunHandle:
    """A RUNNING run of ``plane`` with a local handle, as the runner leaves it."""
    run_id = new_id()
    plane.create(RunRecord(run_id=run_id, agent_id="writer"))
    handle = RunHandle(run_id, "writer", loop)
    plane.local.add(handle)
    assert plane.start(run_id) is not None
    return handle


def subscribed(plane: RedisControlPlane) -> bool:
    channel = plane.keys.channel(plane.owner_id)
    return any(n for _, n in plane.redis.pubsub_numsub(channel))


# -- keys and TTLs ----------------------------------------------------------------------


def test_every_key_is_under_the_prefix_and_a_run_is_one_slot(make_plane: MakePlane) -> None:
    plane = make_plane()
    run_id = new_id()
    plane.create(RunRecord(run_id=run_id, agent_id="writer"))
    plane.start(run_id)
    plane.append_events(run_id, [(1, RunContentEvent(run_id=run_id, agent_id="w", content="a"))])
    names = {k.decode() for k in plane.redis.scan_iter(match=f"{plane.prefix}:*")}
    assert plane.keys.run(run_id) in names and plane.keys.events(run_id) in names
    assert plane.keys.lease(plane.owner_id) in names
    assert all(n.startswith(plane.prefix + ":") for n in names)
    assert f"{{{run_id}}}" in plane.keys.run(run_id)
    assert key_slot(plane.keys.run(run_id).encode()) == key_slot(plane.keys.events(run_id).encode())


def test_ttls_pending_running_terminal(make_plane: MakePlane) -> None:
    plane = make_plane(terminal_ttl=60.0)
    run_id = new_id()
    plane.create(RunRecord(run_id=run_id, agent_id="writer"))
    run_key, events_key = plane.keys.run(run_id), plane.keys.events(run_id)
    assert 0 < plane.redis.pttl(run_key) <= keys.PENDING_TTL * 1000
    plane.start(run_id)
    assert plane.redis.pttl(run_key) == -1  # RUNNING: guarded by the lease, not a TTL
    lease_ms = plane.redis.pttl(plane.keys.lease(plane.owner_id))
    assert 0 < lease_ms <= plane.lease_ttl * 1000
    plane.finish(run_id, RunStatus.completed, content="x")
    assert 0 < plane.redis.pttl(run_key) <= 60_000
    # Events flushed after the end (the runner's last batch) expire with the run.
    plane.append_events(run_id, [(1, RunContentEvent(run_id=run_id, agent_id="w", content="a"))])
    assert 0 < plane.redis.pttl(events_key) <= 60_000
    # Events of an unknown run do not stay forever either.
    plane.append_events("ghost", [(1, RunContentEvent(run_id="ghost", agent_id="w", content="a"))])
    assert 0 < plane.redis.pttl(plane.keys.events("ghost")) <= 60_000


def test_a_resent_event_batch_adds_nothing_twice(make_plane: MakePlane) -> None:
    plane = make_plane()
    run_id = new_id()
    batch = [(n, RunContentEvent(run_id=run_id, agent_id="w", content=f"{n}")) for n in (1, 2)]
    plane.append_events(run_id, batch)
    plane.append_events(run_id, batch)
    assert [seq for seq, _ in plane.read_events(run_id)] == [1, 2]


def test_scripts_reload_after_a_script_flush(make_plane: MakePlane) -> None:
    plane = make_plane()
    plane.redis.script_flush()
    run_id = new_id()
    plane.create(RunRecord(run_id=run_id, agent_id="writer"))
    assert plane.start(run_id) is not None


def test_recent_index_is_trimmed_on_create(
    make_plane: MakePlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "MAX_RECENT_RUNS", 5)
    monkeypatch.setattr(redis_plane, "TRIM_EVERY", 1)  # trim at every create here
    plane = make_plane()
    ids = [new_id() for _ in range(8)]
    for run_id in ids:
        plane.create(RunRecord(run_id=run_id, agent_id="writer"))
        time.sleep(0.002)
    plane.start(ids[0])
    assert plane.redis.zcard(plane.keys.recent) == 5
    listed = {r.run_id for r in plane.list_runs()}
    assert listed == {ids[0], *ids[3:]}  # a RUNNING run stays listed through the active index
    assert plane.get(ids[1]) is not None  # out of the index, not out of Redis


def test_recent_index_stays_bounded_when_trimmed_now_and_then(
    make_plane: MakePlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "MAX_RECENT_RUNS", 5)
    plane = make_plane()
    for _ in range(100):
        plane.create(RunRecord(run_id=new_id(), agent_id="writer"))
        assert plane.redis.zcard(plane.keys.recent) <= 5 + redis_plane.TRIM_EVERY


def test_list_prunes_index_entries_of_vanished_runs(make_plane: MakePlane) -> None:
    plane = make_plane()
    ids = [new_id() for _ in range(3)]
    for run_id in ids:
        plane.create(RunRecord(run_id=run_id, agent_id="writer"))
    plane.redis.delete(plane.keys.run(ids[0]))
    assert {r.run_id for r in plane.list_runs()} == set(ids[1:])
    assert plane.redis.zscore(plane.keys.active, ids[0]) is None
    assert plane.redis.zscore(plane.keys.recent, ids[0]) is None


# -- cancels between processes ------------------------------------------------------------


def test_cancel_reaches_another_owner_by_pubsub(make_plane: MakePlane) -> None:
    owner = make_plane(reconcile_interval=1.0)  # the message, not the backstop, must wake it
    other = make_plane()
    agent = Agent(name="Writer", model=OfflineModel(chunk_delay=0.005), control=owner)
    stream = agent.run("go", stream=True)
    run_id = next(stream).run_id
    assert wait_for(lambda: subscribed(owner), 5)
    next(stream)
    began = time.monotonic()
    assert other.cancel(run_id).won
    final = next(e for e in stream if e.is_terminal)
    assert isinstance(final, RunCancelledEvent) and final.content
    assert time.monotonic() - began < 0.5
    record = other.get(run_id)
    assert record is not None and record.stopped and record.content == final.content


def test_a_message_for_another_incarnation_is_ignored(
    make_plane: MakePlane, loop: asyncio.AbstractEventLoop
) -> None:
    plane = make_plane(reconcile_interval=1.0)
    handle = owned_run(plane, loop)
    assert wait_for(lambda: subscribed(plane), 5)
    channel = plane.keys.channel(plane.owner_id)
    plane.redis.publish(channel, f"{handle.run_id}\nnot-this-one\nstale")
    time.sleep(0.2)
    assert not handle.cancelled.is_set()
    inc = plane.redis.hget(plane.keys.run(handle.run_id), "inc")
    assert inc is not None
    plane.redis.publish(channel, f"{handle.run_id}\n{inc.decode()}\nfresh")
    assert handle.cancelled.wait(1.0) and handle.reason == "fresh"


def test_reconcile_catches_a_cancel_whose_message_was_lost(
    make_plane: MakePlane, loop: asyncio.AbstractEventLoop
) -> None:
    plane = make_plane(reconcile_interval=0.2)
    handle = owned_run(plane, loop)
    # Stored without any announcement, as if the PUBLISH never reached the owner.
    plane.redis.hset(
        plane.keys.run(handle.run_id),
        mapping={
            "status": "CANCELLED",
            "cancel_reason": "lost-message",
        },
    )
    assert handle.cancelled.wait(1.0) and handle.reason == "lost-message"


def test_cancel_on_the_owning_instance_needs_no_message(
    make_plane: MakePlane, loop: asyncio.AbstractEventLoop
) -> None:
    plane = make_plane(reconcile_interval=1.0)
    handle = owned_run(plane, loop)
    assert plane.cancel(handle.run_id, reason="here").won
    assert handle.cancelled.is_set() and handle.reason == "here"


# -- leases -------------------------------------------------------------------------------


def die(plane: RedisControlPlane) -> None:
    """Stop heartbeating without a goodbye, as a killed process does."""
    listener = plane._listener
    assert listener is not None
    listener.stop()


def test_runs_of_a_dead_owner_end_worker_lost_when_read(
    make_plane: MakePlane, loop: asyncio.AbstractEventLoop
) -> None:
    owner = make_plane(lease_ttl=0.5)
    reader = make_plane()
    handle = owned_run(owner, loop)
    record = reader.get(handle.run_id)
    assert record is not None and record.status == RunStatus.running  # alive: left alone
    die(owner)
    time.sleep(0.7)
    record = reader.get(handle.run_id)
    assert record is not None
    assert (record.status, record.error, record.cancel_reason, record.stopped) == (
        RunStatus.error,
        REASON_WORKER_LOST,
        REASON_WORKER_LOST,
        True,
    )
    assert not reader.cancel(handle.run_id).won
    assert reader.redis.pttl(reader.keys.run(handle.run_id)) > 0


def test_sweep_ends_dead_owners_runs_and_forgets_the_owner(
    make_plane: MakePlane, loop: asyncio.AbstractEventLoop
) -> None:
    owner = make_plane(lease_ttl=0.5)
    sweeper = make_plane(lease_ttl=0.5)
    handles = [owned_run(owner, loop) for _ in range(3)]
    cancelled = handles[2].run_id
    sweeper.cancel(cancelled)  # cancelled, never stopped by its owner
    die(owner)
    time.sleep(0.7)
    assert sweeper.sweep() == 2
    for handle in handles[:2]:
        record = sweeper.get(handle.run_id)
        assert record is not None and record.status == RunStatus.error
    record = sweeper.get(cancelled)
    assert record is not None and record.status == RunStatus.cancelled and record.stopped
    assert sweeper.redis.zscore(sweeper.keys.owners, owner.owner_id) is None
    assert not sweeper.redis.exists(sweeper.keys.owner_runs(owner.owner_id))
    assert sweeper.sweep() == 0


def test_listener_sweeps_on_its_own(make_plane: MakePlane, loop: asyncio.AbstractEventLoop) -> None:
    owner = make_plane(lease_ttl=0.3)
    watcher = make_plane(lease_ttl=0.3)
    handle = owned_run(owner, loop)
    owned_run(watcher, loop)  # starts the watcher's listener
    die(owner)

    def ended() -> bool:
        status = watcher.redis.hget(watcher.keys.run(handle.run_id), "status")
        return status == b"ERROR"

    assert wait_for(ended, 3.0)


def test_close_gives_up_the_lease(make_plane: MakePlane, loop: asyncio.AbstractEventLoop) -> None:
    plane = make_plane()
    handle = owned_run(plane, loop)
    plane.finish(handle.run_id, RunStatus.completed, content="")
    plane.local.remove(handle)
    client = make_plane().redis
    plane.close()
    assert not client.exists(plane.keys.lease(plane.owner_id))
    assert client.zscore(plane.keys.owners, plane.owner_id) is None


# -- lost records, Redis down --------------------------------------------------------------


def test_owner_restores_a_record_redis_lost_and_it_stays_cancellable(
    make_plane: MakePlane, loop: asyncio.AbstractEventLoop
) -> None:
    owner = make_plane(reconcile_interval=0.1)
    other = make_plane()
    handle = owned_run(owner, loop)
    owner.redis.delete(owner.keys.run(handle.run_id))
    assert wait_for(lambda: other.get(handle.run_id) is not None, 2.0)
    record = other.get(handle.run_id)
    assert record is not None and record.status == RunStatus.running
    assert record.owner == owner.owner_id and record.agent_id == "writer"
    assert other.cancel(handle.run_id).won
    assert handle.cancelled.wait(1.0)


def test_finish_recreates_a_vanished_record(make_plane: MakePlane) -> None:
    plane = make_plane()
    run_id = new_id()
    plane.create(RunRecord(run_id=run_id, agent_id="writer"))
    plane.start(run_id)
    plane.redis.delete(plane.keys.run(run_id))
    stored = plane.finish(run_id, RunStatus.completed, content="kept")
    assert (stored.status, stored.content, stored.stopped) == (RunStatus.completed, "kept", True)
    assert plane.redis.pttl(plane.keys.run(run_id)) > 0


def test_redis_down_raises_control_plane_unavailable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    plane = RedisControlPlane.from_url(url, retry=Retry(backoff=_no_backoff(), retries=1))
    try:
        calls: list[Callable[[], object]] = [
            lambda: plane.create(RunRecord(run_id="r1", agent_id="a")),
            lambda: plane.get("r1"),
            lambda: plane.cancel("r1"),
            lambda: plane.list_runs(),
            lambda: plane.read_events("r1"),
        ]
        for call in calls:
            with pytest.raises(ControlPlaneUnavailable, match="unreachable"):
                call()
        agent = Agent(name="Writer", model=OfflineModel(), control=plane)
        with pytest.raises(ControlPlaneUnavailable):
            agent.run("go")
    finally:
        plane.close()


def _no_backoff() -> Any:
    from redis.backoff import NoBackoff

    return NoBackoff()


def test_no_redis_command_per_chunk(make_plane: MakePlane, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of 2,000 chunks sends exactly the commands a run of 20 does."""
    counts = []
    for words in (20, 2000):
        plane = make_plane()
        monkeypatch.setattr(plane, "_ensure_listener", lambda: None)  # only the run's traffic
        plane.scripts.load(plane.redis)  # once per server, not per run
        sent = count_commands(plane.redis, monkeypatch)
        agent = Agent(name="Writer", model=OfflineModel(" ".join(["w"] * words)), control=plane)
        events = list(agent.run("go", stream=True))
        assert sum(e.event == RunEvent.run_content for e in events) == words
        counts.append(len(sent))
    assert counts[0] == counts[1] <= 12


def count_commands(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the commands sent through ``client`` from now on, pipelined ones included."""
    sent: list[str] = []
    execute_command = client.execute_command
    pipeline = client.pipeline

    def counted_execute(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return execute_command(*args, **options)

    def counted_pipeline(*args: Any, **options: Any) -> Any:
        pipe = pipeline(*args, **options)
        execute = pipe.execute

        def counted(*a: Any, **kw: Any) -> Any:
            sent.extend(str(command[0][0]) for command in pipe.command_stack)
            return execute(*a, **kw)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(client, "execute_command", counted_execute)
    monkeypatch.setattr(client, "pipeline", counted_pipeline)
    return sent
