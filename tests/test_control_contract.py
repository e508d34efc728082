"""The control-plane contract (DESIGN.md section 2), proved on every backend.

One suite, parametrised over the in-process memory plane, Redis through
fakeredis, and a real Redis server.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fakeredis
import pytest
import redis

from kern.agent import Agent
from kern.context import RunHandle
from kern.control.base import CancelResult, ControlPlane, RunRecord
from kern.control.memory import MemoryControlPlane
from kern.control.redis import RedisControlPlane
from kern.exceptions import InvalidRunId, RunIdInUse
from kern.models.offline import OfflineModel
from kern.run.agent import (
    Metrics,
    RunCancelledEvent,
    RunContentEvent,
    RunEvent,
    RunStartedEvent,
)
from kern.run.base import RunStatus

BACKENDS = ["memory", "fakeredis", pytest.param("redis", marks=pytest.mark.redis)]
RACES = {"memory": 300, "fakeredis": 300, "redis": 1000}
HEAD_START = 0.001  # the most one side of a race waits: spreads the winners over both sides

MakePlane = Callable[..., ControlPlane]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_plane(backend: str, request: pytest.FixtureRequest) -> Iterator[MakePlane]:
    """Build planes of the backend under test (all sharing one store); closed afterwards."""
    made: list[ControlPlane] = []
    server = fakeredis.FakeServer()
    prefix = request.getfixturevalue("redis_prefix") if backend == "redis" else "kt-fake"
    url = request.getfixturevalue("redis_url") if backend == "redis" else ""

    def make(**options: Any) -> ControlPlane:
        plane: ControlPlane
        if backend == "memory":
            plane = MemoryControlPlane(**options)
        elif backend == "fakeredis":
            plane = RedisControlPlane(fakeredis.FakeRedis(server=server), prefix=prefix, **options)
        else:
            plane = RedisControlPlane(
                redis.Redis.from_url(url), prefix=prefix, close_client=True, **options
            )
        made.append(plane)
        return plane

    yield make
    for plane in made:
        plane.close()


@pytest.fixture
def plane(make_plane: MakePlane) -> ControlPlane:
    return make_plane()


def new_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


def running(plane: ControlPlane, agent_id: str = "writer") -> str:
    run_id = new_id()
    plane.create(RunRecord(run_id=run_id, agent_id=agent_id, input="hi"))
    assert plane.start(run_id) is not None
    return run_id


# -- 1. lifecycle; a terminal state never changes ------------------------------------


def test_lifecycle_pending_running_completed(plane: ControlPlane) -> None:
    run_id = new_id()
    plane.create(RunRecord(run_id=run_id, agent_id="writer", input="hi", session_id="s1"))
    pending = plane.get(run_id)
    assert pending is not None
    assert (pending.status, pending.input, pending.session_id) == (RunStatus.pending, "hi", "s1")

    started = plane.start(run_id)
    assert started is not None and started.status == RunStatus.running
    assert started.owner == plane.owner_id and started.started_at is not None

    done = plane.finish(
        run_id, RunStatus.completed, content="all of it", metrics=Metrics(output_tokens=3)
    )
    assert (done.status, done.content, done.stopped) == (RunStatus.completed, "all of it", True)
    assert done.metrics is not None and done.metrics.output_tokens == 3
    assert done.ended_at is not None


def test_terminal_state_never_changes(plane: ControlPlane) -> None:
    run_id = running(plane)
    plane.finish(run_id, RunStatus.completed, content="done")
    again = plane.finish(run_id, RunStatus.error, content="done", error="late")
    assert again.status == RunStatus.completed and again.error is None
    assert plane.cancel(run_id) == CancelResult(won=False, record=plane.get(run_id))
    assert plane.start(run_id) is None
    record = plane.get(run_id)
    assert record is not None and record.status == RunStatus.completed


def test_create_refuses_a_taken_id(plane: ControlPlane) -> None:
    run_id = running(plane)
    with pytest.raises(RunIdInUse):
        plane.create(RunRecord(run_id=run_id, agent_id="writer"))
    plane.finish(run_id, RunStatus.completed, content="x")
    with pytest.raises(RunIdInUse):  # refused while the old record lives
        plane.create(RunRecord(run_id=run_id, agent_id="writer"))
    record = plane.get(run_id)
    assert record is not None and record.status == RunStatus.completed


def test_invalid_run_id_is_refused(plane: ControlPlane) -> None:
    for bad in ("", "a b", "x*", "{tag}"):
        with pytest.raises(InvalidRunId):
            plane.create(RunRecord(run_id=bad, agent_id="writer"))


# -- 2. cancel stored first; a cancelled PENDING run never starts ---------------------


def test_cancelled_pending_run_never_starts(plane: ControlPlane) -> None:
    run_id = new_id()
    plane.create(RunRecord(run_id=run_id, agent_id="writer"))
    result = plane.cancel(run_id, reason="changed my mind")
    assert result.won and result.record is not None
    assert result.record.status == RunStatus.cancelled and result.record.stopped
    assert plane.start(run_id) is None
    kept = plane.finish(run_id, RunStatus.cancelled, content="")
    assert kept.status == RunStatus.cancelled and kept.cancel_reason == "changed my mind"


def test_cancel_running_keeps_content_and_reports_cancelled(plane: ControlPlane) -> None:
    run_id = running(plane)
    result = plane.cancel(run_id, reason="user")
    assert result.won and result.record is not None
    assert result.record.status == RunStatus.cancelled and not result.record.stopped
    stored = plane.finish(run_id, RunStatus.completed, content="partial story")
    assert stored.status == RunStatus.cancelled  # the finish lost: it is told so
    assert (stored.content, stored.stopped, stored.cancel_reason) == ("partial story", True, "user")
    record = plane.get(run_id)
    assert record is not None and record.content == "partial story"


def test_cancel_is_idempotent(plane: ControlPlane) -> None:
    run_id = running(plane)
    assert plane.cancel(run_id).won
    second = plane.cancel(run_id)
    assert not second.won
    assert second.record is not None and second.record.status == RunStatus.cancelled


def test_cancel_of_another_agents_run_is_refused(plane: ControlPlane) -> None:
    run_id = running(plane, agent_id="writer")
    assert plane.cancel(run_id, agent_id="reviewer") == CancelResult(won=False, record=None)
    record = plane.get(run_id)
    assert record is not None and record.status == RunStatus.running
    assert plane.cancel(run_id, agent_id="writer").won


def test_cancel_of_an_unknown_run(plane: ControlPlane) -> None:
    assert plane.cancel("no-such-run") == CancelResult(won=False, record=None)
    assert plane.get("no-such-run") is None


def test_cancel_wakes_the_local_owner(plane: ControlPlane) -> None:
    run_id = running(plane)
    loop = asyncio.new_event_loop()
    try:
        handle = RunHandle(run_id, "writer", loop)
        plane.local.add(handle)
        assert plane.cancel(run_id, reason="stop").won
        assert handle.cancelled.is_set() and handle.reason == "stop"
    finally:
        loop.close()


# -- 1. the race: exactly one winner, the loser told ----------------------------------


def test_cancel_racing_finish_has_exactly_one_winner(plane: ControlPlane, backend: str) -> None:
    races = RACES[backend]
    barrier = threading.Barrier(2)
    outcomes = {"cancel": 0, "finish": 0}
    lost = 0

    def cancel(run_id: str, delay: float) -> CancelResult:
        barrier.wait()
        time.sleep(delay)
        return plane.cancel(run_id)

    def finish(run_id: str, delay: float) -> RunRecord:
        barrier.wait()
        time.sleep(delay)
        return plane.finish(run_id, RunStatus.completed, content="text")

    with ThreadPoolExecutor(2) as pool:
        for _ in range(races):
            run_id = running(plane)
            lead = random.uniform(-HEAD_START, HEAD_START)
            cancelled = pool.submit(cancel, run_id, max(0.0, -lead))
            finished = pool.submit(finish, run_id, max(0.0, lead))
            c, f = cancelled.result(), finished.result()
            final = plane.get(run_id)
            assert final is not None
            if c.won:
                ok = f.status == final.status == RunStatus.cancelled
            else:
                ok = f.status == final.status == RunStatus.completed
                ok = ok and c.record is not None and c.record.status == RunStatus.completed
            lost += not ok
            outcomes["cancel" if c.won else "finish"] += 1
    print(f"{backend}: {races} races, {outcomes}, lost {lost}")
    assert lost == 0, f"{lost} of {races} races had no single winner ({outcomes})"
    assert min(outcomes.values()) > 0, f"no real race: one side always won ({outcomes})"


# -- 7. expiry: terminal runs go -------------------------------------------------------


def test_terminal_runs_expire(make_plane: MakePlane) -> None:
    plane = make_plane(terminal_ttl=0.3)
    run_id = running(plane)
    plane.append_events(run_id, [(1, started(run_id))])
    plane.finish(run_id, RunStatus.completed, content="x")
    keep = running(plane)  # a live run never expires
    time.sleep(0.7)
    assert plane.get(run_id) is None
    assert plane.read_events(run_id) == []
    assert [r.run_id for r in plane.list_runs()] == [keep]
    plane.create(RunRecord(run_id=run_id, agent_id="writer"))  # the id is free again
    record = plane.get(run_id)
    assert record is not None and record.status == RunStatus.pending


# -- the event log ---------------------------------------------------------------------


def started(run_id: str) -> RunStartedEvent:
    return RunStartedEvent(run_id=run_id, agent_id="writer", model="offline")


def content(run_id: str, text: str) -> RunContentEvent:
    return RunContentEvent(run_id=run_id, agent_id="writer", content=text)


def test_event_log_append_and_read_after(plane: ControlPlane) -> None:
    run_id = running(plane)
    events = [(1, started(run_id)), (2, content(run_id, "Once")), (3, content(run_id, " upon"))]
    plane.append_events(run_id, events[:2])
    plane.append_events(run_id, events[2:])
    assert plane.read_events(run_id) == events
    assert plane.read_events(run_id, after=2) == events[2:]
    assert plane.read_events(run_id, after=3) == []
    assert plane.read_events("no-such-run") == []


def test_event_log_read_times_out_then_wakes_on_append(plane: ControlPlane) -> None:
    run_id = running(plane)
    began = time.monotonic()
    assert plane.read_events(run_id, after=0, timeout=0.2) == []
    assert time.monotonic() - began >= 0.18

    timer = threading.Timer(0.2, plane.append_events, [run_id, [(1, started(run_id))]])
    timer.start()
    began = time.monotonic()
    got = plane.read_events(run_id, after=0, timeout=5.0)
    timer.join()
    assert [seq for seq, _ in got] == [1]
    assert time.monotonic() - began < 2.0


async def test_async_twins(plane: ControlPlane) -> None:
    run_id = new_id()
    await plane.acreate(RunRecord(run_id=run_id, agent_id="writer"))
    assert (await plane.astart(run_id)) is not None
    await plane.aappend_events(run_id, [(1, started(run_id))])
    assert len(await plane.aread_events(run_id, 0, 0.5)) == 1
    assert (await plane.acancel(run_id)).won
    stored = await plane.afinish(run_id, RunStatus.completed, content="abc")
    assert stored.status == RunStatus.cancelled
    record = await plane.aget(run_id)
    assert record is not None and record.content == "abc"


# -- listing ----------------------------------------------------------------------------


def test_list_runs_filters_newest_first(plane: ControlPlane) -> None:
    ids = []
    for agent_id in ("writer", "reviewer", "writer"):
        run_id = new_id()
        plane.create(RunRecord(run_id=run_id, agent_id=agent_id))
        ids.append(run_id)
        time.sleep(0.002)
    plane.start(ids[0])
    plane.cancel(ids[1])
    assert [r.run_id for r in plane.list_runs()] == ids[::-1]
    assert [r.run_id for r in plane.list_runs(status=RunStatus.running)] == [ids[0]]
    assert [r.run_id for r in plane.list_runs(status=RunStatus.cancelled)] == [ids[1]]
    assert [r.run_id for r in plane.list_runs(agent_id="writer")] == [ids[2], ids[0]]
    assert [r.run_id for r in plane.list_runs(limit=1)] == [ids[2]]


def test_wait_stopped_returns_once_the_owner_saved(plane: ControlPlane) -> None:
    run_id = running(plane)
    plane.cancel(run_id)
    record = plane.wait_stopped(run_id, 0.1)
    assert record is not None and not record.stopped
    threading.Timer(0.1, plane.finish, [run_id, RunStatus.cancelled], {"content": "abc"}).start()
    record = plane.wait_stopped(run_id, 5.0)
    assert record is not None and record.stopped and record.content == "abc"


# -- 5, 8. end to end: a streaming run stops at once and keeps its content --------------


def test_streaming_run_cancelled_from_another_thread(plane: ControlPlane) -> None:
    agent = Agent(name="Writer", model=OfflineModel(chunk_delay=0.005), control=plane)
    stream = agent.run("go", stream=True)
    chunks = 0
    final = None
    for event in stream:
        if event.event == RunEvent.run_content:
            chunks += 1
            if chunks == 10:
                threading.Thread(target=agent.cancel_run, args=(event.run_id,)).start()
        if event.is_terminal:
            final = event
    assert isinstance(final, RunCancelledEvent)
    assert 10 <= chunks < 200 and final.content
    record = plane.get(final.run_id)
    assert record is not None
    assert (record.status, record.content, record.stopped) == (
        RunStatus.cancelled,
        final.content,
        True,
    )


def test_stalled_model_is_woken_by_cancel(plane: ControlPlane) -> None:
    agent = Agent(name="Writer", model=OfflineModel(first_token_delay=3600), control=plane)
    stream = agent.run("go", stream=True)
    first = next(stream)
    threading.Timer(0.1, agent.cancel_run, [first.run_id]).start()
    began = time.monotonic()
    final = list(stream)[-1]
    assert isinstance(final, RunCancelledEvent)
    assert time.monotonic() - began < 2.0
