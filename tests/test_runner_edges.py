"""Edges of the run loop found in review: outside cancels, runs held elsewhere, the log batcher."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from redis_support import unique_prefix

from kern.agent import Agent
from kern.control.base import RunRecord
from kern.control.batching import EventBatcher
from kern.control.memory import MemoryControlPlane
from kern.control.redis import RedisControlPlane
from kern.exceptions import RunNotStarted
from kern.models.offline import OfflineModel
from kern.run.agent import RunContentEvent, RunStartedEvent
from kern.run.base import RunStatus
from kern.runner import RunRequest, execute_run


@pytest.fixture(params=["memory", "redis"])
def control(request: pytest.FixtureRequest) -> Iterator[MemoryControlPlane | RedisControlPlane]:
    if request.param == "memory":
        yield MemoryControlPlane()
        return
    url = request.getfixturevalue("redis_url")
    plane = RedisControlPlane.from_url(url, prefix=unique_prefix())
    yield plane
    plane.close()


async def test_cancelling_the_callers_task_twice_still_stores_the_end(
    control: MemoryControlPlane | RedisControlPlane,
) -> None:
    agent = Agent(name="w", model=OfflineModel(chunk_delay=0.01), control=control)
    events: list[object] = []
    run = asyncio.ensure_future(execute_run(agent, RunRequest("twice", "go"), events.append))
    await asyncio.sleep(0.3)
    run.cancel()
    await asyncio.sleep(0)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert getattr(events[-1], "status", None) == RunStatus.cancelled  # one terminal event
    record = await asyncio.to_thread(control.wait_stopped, "twice", 10)
    assert record is not None and record.status == RunStatus.cancelled
    assert record.stopped and record.content
    assert record.cancel_reason == "caller_cancelled"
    assert len(control.local) == 0


async def test_a_cancel_of_the_caller_right_at_the_start_never_leaves_a_run_running(
    control: MemoryControlPlane | RedisControlPlane,
) -> None:
    agent = Agent(name="w", model=OfflineModel(chunk_delay=0.01), control=control)
    for n in range(20):
        run = agent.arun("go", run_id=f"early-{n}")
        await asyncio.sleep(0.001 * (n % 4))
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    for n in range(20):
        record = await asyncio.to_thread(control.wait_stopped, f"early-{n}", 10)
        if record is not None:  # stored at all: then it ended, and was saved
            assert record.is_terminal and record.stopped, record
    assert len(control.local) == 0


def test_a_run_held_by_another_process_is_left_alone() -> None:
    control = MemoryControlPlane()
    control.create(RunRecord(run_id="held", agent_id="w"))
    other = MemoryControlPlane()  # stands for the other process: same record store
    other._records = control._records
    assert other.start("held") is not None
    agent = Agent(name="w", model=OfflineModel("x"), control=control)
    events: list[object] = []
    with pytest.raises(RunNotStarted):
        asyncio.run(execute_run(agent, RunRequest("held", "go"), events.append, create=False))
    assert events == []  # nothing written for a run that is not ours
    record = control.get("held")
    assert record is not None and record.status == RunStatus.running
    assert record.owner == other.owner_id


def test_a_run_cancelled_while_queued_ends_with_started_and_cancelled() -> None:
    control = MemoryControlPlane()
    control.create(RunRecord(run_id="queued", agent_id="w"))
    assert control.cancel("queued").won
    agent = Agent(name="w", model=OfflineModel("x"), control=control)
    events: list[object] = []
    final = asyncio.run(execute_run(agent, RunRequest("queued", "go"), events.append, create=False))
    assert isinstance(events[0], RunStartedEvent) and events[-1] is final
    assert final.status == RunStatus.cancelled and len(events) == 2
    assert control.get("queued").started_at is None  # type: ignore[union-attr]


def test_batcher_flush_waits_for_the_batch_being_written() -> None:
    written: list[int] = []
    started = threading.Event()

    def slow(batch: dict[str, list[tuple[int, object]]]) -> None:
        started.set()
        time.sleep(0.3)
        written.extend(seq for items in batch.values() for seq, _ in items)

    batcher = EventBatcher(slow, interval=0.01)  # type: ignore[arg-type]
    event = RunContentEvent(run_id="r", agent_id="a", content="x")
    batcher.add("r", (1, event))
    assert started.wait(5)
    asyncio.run(batcher.flush())  # the batch is in flight: flush must wait for it
    assert written == [1]
    batcher.close()
    batcher.add("r", (2, event))  # dropped after close, never hangs a flush
    asyncio.run(asyncio.wait_for(batcher.flush(), 5))
    assert written == [1]
