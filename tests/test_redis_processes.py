"""Cancels across real processes: a worker streams, the ``kern`` CLI cancels (real Redis)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
from redis_support import kern_cli, start_proc

from kern.control.base import REASON_WORKER_LOST, RunRecord
from kern.control.redis import RedisControlPlane
from kern.run.agent import RunCancelledEvent, RunCompletedEvent, TerminalEvent, event_from_json
from kern.run.base import RunStatus
from kern.testing.redis_server import free_port

pytestmark = pytest.mark.redis


@dataclass
class Worker:
    """A ``tests/procs/stream_worker.py`` process and what it printed."""

    proc: subprocess.Popen[str]
    started: queue.Queue[tuple[str, float]] = field(default_factory=queue.Queue)
    ended: dict[str, tuple[float, TerminalEvent]] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.reader is not None:
            self.reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "RUN":
                run_id, stamp = rest.split()
                self.started.put((run_id, float(stamp)))
            elif kind == "END":
                stamp, payload = rest.split(" ", 1)
                event = event_from_json(payload)
                assert event.is_terminal
                self.ended[event.run_id] = (float(stamp), event)  # type: ignore[assignment]
            elif kind == "DONE":
                self.done.set()

    def next_run(self, timeout: float = 20) -> str:
        return self.started.get(timeout=timeout)[0]

    def wait_end(self, run_id: str, timeout: float = 20) -> TerminalEvent:
        deadline = time.monotonic() + timeout
        while run_id not in self.ended:
            assert time.monotonic() < deadline, f"run {run_id} did not end"
            assert self.proc.poll() is None or run_id in self.ended, self.stderr()
            time.sleep(0.01)
        return self.ended[run_id][1]

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()


@pytest.fixture
def spawn(redis_url: str, redis_prefix: str) -> Iterator[object]:
    workers: list[Worker] = []

    def spawn_worker(*args: str) -> Worker:
        worker = Worker(start_proc("stream_worker.py", list(args), redis_url, redis_prefix))
        worker.reader = threading.Thread(target=worker.read, daemon=True)
        worker.reader.start()
        workers.append(worker)
        return worker

    yield spawn_worker
    for worker in workers:
        worker.close()


@pytest.fixture
def plane(redis_url: str, redis_prefix: str) -> Iterator[RedisControlPlane]:
    plane = RedisControlPlane(
        redis.Redis.from_url(redis_url), prefix=redis_prefix, close_client=True
    )
    yield plane
    plane.close()


def cli(redis_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return kern_cli(list(args), redis_url, prefix)


def test_kern_cancel_stops_a_streaming_worker(
    spawn: object, redis_url: str, redis_prefix: str
) -> None:
    worker = spawn("--chunk-delay", "0.01")  # type: ignore[operator]
    run_id = worker.next_run()
    time.sleep(0.3)  # some content streams first
    done = cli(redis_url, redis_prefix, "cancel", run_id, "--wait", "5", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["cancelled"] and answer["status"] == "CANCELLED" and answer["stopped"]
    final = worker.wait_end(run_id)
    assert isinstance(final, RunCancelledEvent) and final.content
    assert answer["run"]["content"] == final.content
    assert worker.done.wait(10)

    again = cli(redis_url, redis_prefix, "cancel", run_id, "--json")
    assert again.returncode == 0  # a repeated cancel succeeds (already CANCELLED)
    assert json.loads(again.stdout)["already_cancelled"]

    shown = cli(redis_url, redis_prefix, "status", run_id, "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["status"] == "CANCELLED"


def test_kern_cancel_wakes_a_worker_whose_model_is_stalled(
    spawn: object, redis_url: str, redis_prefix: str
) -> None:
    worker = spawn("--first-token-delay", "3600")  # type: ignore[operator]
    run_id = worker.next_run()
    began = time.time()
    done = cli(redis_url, redis_prefix, "cancel", run_id, "--wait", "5")
    assert done.returncode == 0, done.stderr
    assert "Stopped; 0 characters of content kept." in done.stdout
    final = worker.wait_end(run_id)
    assert isinstance(final, RunCancelledEvent) and final.content == ""
    assert worker.ended[run_id][0] - began < 5  # the CLI's own start-up included


def test_kern_cancel_before_start_the_run_never_starts(
    spawn: object, plane: RedisControlPlane, redis_url: str, redis_prefix: str
) -> None:
    plane.create(RunRecord(run_id="queued-1", agent_id="writer", input="go"))
    done = cli(redis_url, redis_prefix, "cancel", "queued-1")
    assert done.returncode == 0, done.stderr
    assert "Cancelled run queued-1" in done.stdout
    worker = spawn("--existing", "queued-1")  # type: ignore[operator]
    final = worker.wait_end("queued-1")
    assert isinstance(final, RunCancelledEvent) and final.content == ""
    record = plane.get("queued-1")
    assert record is not None
    assert (record.status, record.started_at, record.owner) == (RunStatus.cancelled, None, None)


def test_kern_cancel_after_completion_changes_nothing(
    spawn: object, plane: RedisControlPlane, redis_url: str, redis_prefix: str
) -> None:
    worker = spawn("--words", "20", "--chunk-delay", "0")  # type: ignore[operator]
    run_id = worker.next_run()
    assert isinstance(worker.wait_end(run_id), RunCompletedEvent)
    assert worker.done.wait(10)
    done = cli(redis_url, redis_prefix, "cancel", run_id)
    assert done.returncode == 1
    assert "already ended COMPLETED" in done.stderr
    record = plane.get(run_id)
    assert record is not None and record.status == RunStatus.completed

    unknown = cli(redis_url, redis_prefix, "cancel", "no-such-run", "--json")
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["found"] is False
    assert cli(redis_url, redis_prefix, "status", "no-such-run").returncode == 1


def test_kern_runs_lists_and_filters(
    plane: RedisControlPlane, redis_url: str, redis_prefix: str
) -> None:
    plane.create(RunRecord(run_id="list-pending", agent_id="writer"))
    plane.create(RunRecord(run_id="list-cancelled", agent_id="writer"))
    plane.cancel("list-cancelled")
    table = cli(redis_url, redis_prefix, "runs")
    assert table.returncode == 0, table.stderr
    assert "list-pending" in table.stdout and "CANCELLED" in table.stdout
    listed = cli(redis_url, redis_prefix, "runs", "--status", "pending", "--json")
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ["list-pending"]
    bad = cli(redis_url, redis_prefix, "runs", "--status", "sleeping")
    assert bad.returncode == 2 and "unknown status" in bad.stderr


def test_cli_without_a_reachable_redis_exits_2(redis_prefix: str) -> None:
    unset = kern_cli(["cancel", "r1"], None, redis_prefix)
    assert unset.returncode == 2 and "KERN_REDIS_URL is not set" in unset.stderr
    down = kern_cli(["status", "r1"], f"redis://127.0.0.1:{free_port()}/0", redis_prefix)
    assert down.returncode == 2 and "unreachable" in down.stderr
    assert "Traceback" not in down.stderr


@pytest.mark.slow
def test_killed_worker_runs_end_worker_lost_within_15s(
    spawn: object, plane: RedisControlPlane
) -> None:
    worker = spawn("--runs", "3", "--concurrency", "3", "--chunk-delay", "0.05")  # type: ignore[operator]
    run_ids = [worker.next_run() for _ in range(3)]
    os.kill(worker.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    pending = set(run_ids)
    while pending and time.monotonic() - killed < 15:
        for run_id in list(pending):
            record = plane.get(run_id)  # a reader from another process settles the lease
            assert record is not None
            if record.status != RunStatus.running:
                assert (record.status, record.error) == (RunStatus.error, REASON_WORKER_LOST)
                pending.discard(run_id)
        time.sleep(0.25)
    took = time.monotonic() - killed
    assert not pending, f"still RUNNING {took:.1f} s after the kill"
    print(f"worker_lost seen {took:.1f} s after SIGKILL")
