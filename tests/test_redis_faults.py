"""Faults on a private redis-server: killed pub/sub connections, a restart mid-run.

A worker process streams runs; this process cancels them through its own
control plane while the faults happen, and checks that every cancel lands:
the run ends RunCancelled, promptly, with its content kept.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_support import start_proc, wait_for
from test_redis_processes import Worker

from kern.context import RunHandle
from kern.control.base import RunRecord
from kern.control.redis import RedisControlPlane
from kern.exceptions import ControlPlaneUnavailable
from kern.run.agent import RunCancelledEvent, RunCompletedEvent
from kern.run.base import RunStatus
from kern.testing.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LANDED_WITHIN = 2.0
"""A cancel has landed when its run ended this soon after the cancel was stored: the
reconcile interval (0.5 s) bounds it even when the pub/sub message was lost."""


def spawn(server: RedisServer, *args: str) -> Worker:
    worker = Worker(start_proc("stream_worker.py", list(args), server.url, "kf"))
    worker.reader = threading.Thread(target=worker.read, daemon=True)
    worker.reader.start()
    return worker


@pytest.fixture
def plane(private_redis: RedisServer) -> Iterator[RedisControlPlane]:
    plane = RedisControlPlane.from_url(private_redis.url, prefix="kf")
    yield plane
    plane.close()


def kill_pubsub_clients(server: RedisServer, stop: threading.Event, kills: list[int]) -> None:
    client = server.client()
    try:
        while not stop.wait(0.02):
            kills.append(int(client.client_kill_filter(_type="pubsub")))
    finally:
        client.close()


def test_every_cancel_lands_while_pubsub_connections_are_killed(
    private_redis: RedisServer, plane: RedisControlPlane
) -> None:
    runs = 1000
    worker = spawn(
        private_redis,
        "--runs",
        str(runs),
        "--concurrency",
        "50",
        "--words",
        "400",
        "--chunk-delay",
        "0.005",
    )
    stop, kills = threading.Event(), list[int]()
    killer = threading.Thread(target=kill_pubsub_clients, args=(private_redis, stop, kills))
    killer.start()
    cancelled_at: dict[str, float] = {}
    lock = threading.Lock()

    def cancel(run_id: str) -> None:
        time.sleep(random.uniform(0.0, 0.1))
        won = plane.cancel(run_id).won
        with lock:
            cancelled_at[run_id] = time.time() if won else -1.0

    try:
        with ThreadPoolExecutor(16) as pool:
            for _ in range(runs):
                pool.submit(cancel, worker.next_run(timeout=30))
        assert worker.done.wait(60), worker.stderr()
    finally:
        stop.set()
        killer.join()
        worker.close()

    latencies, lost = [], []
    for run_id, at in cancelled_at.items():
        ended, final = worker.ended[run_id]
        if at < 0:  # the run had completed first: not a cancel to land
            assert isinstance(final, RunCompletedEvent)
            continue
        latency = ended - at
        latencies.append(latency)
        if not isinstance(final, RunCancelledEvent) or latency > LANDED_WITHIN:
            lost.append((run_id, final.event, round(latency, 3)))
    latencies.sort()
    print(
        f"\n{len(latencies)} cancels, {sum(kills)} pub/sub connections killed in "
        f"{len(kills)} rounds; stop latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms; lost {len(lost)}"
    )
    assert len(cancelled_at) == runs and sum(kills) > 0
    assert lost == [], f"{len(lost)} cancels did not land: {lost[:5]}"


def test_redis_restart_mid_run_ends_runs_in_a_defined_state(
    private_redis: RedisServer, plane: RedisControlPlane
) -> None:
    worker = spawn(
        private_redis,
        "--runs",
        "4",
        "--concurrency",
        "4",
        "--words",
        "400",
        "--chunk-delay",
        "0.01",
    )
    run_ids = [worker.next_run() for _ in range(4)]
    private_redis.restart(down_for=0.3)  # every key is lost: no persistence

    # The owner puts its runs back (RUNNING) on reconnecting, so they stay cancellable.
    def restored() -> bool:
        return all(plane.get(run_id) is not None for run_id in run_ids)

    assert wait_for(restored, 10, interval=0.05), "the owner did not restore its runs"
    for run_id in run_ids[:2]:
        assert plane.cancel(run_id).won
    finals = {run_id: worker.wait_end(run_id, timeout=20) for run_id in run_ids}
    for run_id in run_ids[:2]:
        assert isinstance(finals[run_id], RunCancelledEvent) and finals[run_id].content
    for run_id in run_ids[2:]:
        assert isinstance(finals[run_id], RunCompletedEvent)
    assert worker.done.wait(10)
    worker.close()
    for run_id, final in finals.items():
        record = plane.get(run_id)
        assert record is not None and record.stopped
        assert record.status == final.status and record.content == final.content

    # A run started after the restart is cancelled like any other.
    later = spawn(private_redis, "--chunk-delay", "0.01")
    run_id = later.next_run()
    assert plane.cancel(run_id).won
    assert isinstance(later.wait_end(run_id), RunCancelledEvent)
    later.close()
    record = plane.get(run_id)
    assert record is not None and record.status == RunStatus.cancelled


def test_listener_resubscribes_after_its_connection_is_killed(
    private_redis: RedisServer, plane: RedisControlPlane
) -> None:
    worker = spawn(private_redis, "--chunk-delay", "0.01")
    run_id = worker.next_run()
    client: redis.Redis = private_redis.client()
    try:
        channel = f"kf:owner:{_owner(plane, run_id)}"
        assert wait_for(lambda: client.pubsub_numsub(channel)[0][1] == 1, 5)
        assert client.client_kill_filter(_type="pubsub") == 1
        assert wait_for(lambda: client.pubsub_numsub(channel)[0][1] == 1, 5)
        began = time.time()
        assert plane.cancel(run_id).won
        assert isinstance(worker.wait_end(run_id), RunCancelledEvent)
        assert worker.ended[run_id][0] - began < LANDED_WITHIN
    finally:
        client.close()
        worker.close()


def _owner(plane: RedisControlPlane, run_id: str) -> str:
    record = plane.get(run_id)
    assert record is not None and record.owner is not None
    return record.owner


def test_an_end_recorded_while_redis_is_down_is_stored_when_it_is_back(
    private_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(private_redis.url, retry=Retry(NoBackoff(), 0))
    plane = RedisControlPlane(client, prefix="kf", close_client=True, reconcile_interval=0.2)
    loop = asyncio.new_event_loop()
    try:
        plane.create(RunRecord(run_id="late-end", agent_id="writer"))
        handle = RunHandle("late-end", "writer", loop)
        plane.local.add(handle)
        assert plane.start("late-end") is not None
        private_redis.stop()
        with pytest.raises(ControlPlaneUnavailable):
            plane.finish("late-end", RunStatus.completed, content="the whole story")
        plane.local.remove(handle)
        private_redis.start()  # empty: the run's record is gone too

        def stored() -> bool:
            record = plane.get("late-end")
            return record is not None and record.status == RunStatus.completed

        assert wait_for(stored, 10, interval=0.1)
        record = plane.get("late-end")
        assert record is not None and record.content == "the whole story" and record.stopped
    finally:
        plane.close()
        loop.close()
