"""Scaled workers on the Redis run queue: real `kern worker` processes, real Redis."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import KERN, kern_env, wait_for

from kern.client import RunClient
from kern.control.base import REASON_WORKER_LOST
from kern.control.redis import RedisControlPlane
from kern.run.agent import RunContentEvent, RunEvent, RunStartedEvent
from kern.run.base import RunStatus

TESTS = Path(__file__).resolve().parent


class Workers:
    """`kern worker` processes serving tests/procs/queue_app.py."""

    def __init__(self, url: str, prefix: str, logs: Path) -> None:
        self.url, self.prefix, self.logs = url, prefix, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"worker-{len(self.procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(KERN), "worker", "procs.queue_app:agents", "--claim-after", "2", *extra],
                cwd=TESTS,
                env=kern_env(self.url, self.prefix),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def serving(self) -> int:
        """How many workers have logged that they serve."""
        return sum(
            "serving" in log.read_text(errors="replace") for log in self.logs.glob("worker-*.log")
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def client(redis_url: str, redis_prefix: str) -> Iterator[RunClient]:
    plane = RedisControlPlane.from_url(redis_url, prefix=redis_prefix)
    yield RunClient(plane)
    plane.close()


@pytest.fixture
def workers(redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(redis_url, redis_prefix, tmp_path)
    yield group
    group.stop_all()


def announce(client: RunClient) -> None:
    """Let submit() know the agents before any worker has started."""
    client.control.redis.hset(
        f"{client.control.prefix}:agents", mapping={"short": "{}", "long": "{}"}
    )


def check_log(client: RunClient, run_id: str) -> None:
    """The run's log: numbered 1..n with no gap or repeat, one terminal event, last."""
    log = client.control.read_events(run_id)
    seqs = [seq for seq, _ in log]
    assert seqs == list(range(1, len(log) + 1)), run_id
    events = [event for _, event in log]
    assert events and isinstance(events[0], RunStartedEvent), run_id
    assert [e.is_terminal for e in events].count(True) == 1 and events[-1].is_terminal, run_id
    final = events[-1]
    streamed = "".join(e.content for e in events if isinstance(e, RunContentEvent))
    assert final.content == streamed, run_id
    record = client.status(run_id)
    assert record is not None and record.status == final.status and record.content == streamed


def test_three_workers_three_hundred_runs_with_random_cancels(
    client: RunClient, workers: Workers
) -> None:
    rng = random.Random(1234)
    announce(client)
    # Runs queued before any worker is up: half are cancelled while PENDING.
    queued = [client.submit("short", f"q{n}") for n in range(60)]
    cancelled_pending = set(queued[::2])
    for run_id in cancelled_pending:
        assert client.cancel(run_id) is True
    for _ in range(3):
        workers.start("--concurrency", "20")  # no single worker can take every run
    assert wait_for(lambda: workers.serving() == 3, timeout=30)
    runs = list(queued)
    answers: dict[str, bool] = {}
    plan: list[tuple[float, str]] = []
    started = time.monotonic()
    for n in range(240):
        run_id = client.submit("short", f"r{n}")
        runs.append(run_id)
        if rng.random() < 0.6:  # cancel at a random moment: before, during or after
            plan.append((started + rng.uniform(0.0, 1.2), run_id))
    for at, run_id in sorted(plan):
        time.sleep(max(0.0, at - time.monotonic()))
        answers[run_id] = client.cancel(run_id)

    def all_ended() -> bool:
        return all(
            (r := client.status(run_id)) is not None and r.is_terminal and r.stopped
            for run_id in runs
        )

    assert wait_for(all_ended, timeout=90, interval=0.2), "runs still going"
    for run_id in cancelled_pending:
        record = client.status(run_id)
        assert record is not None and record.status == RunStatus.cancelled
        assert record.started_at is None and record.owner is None, "a cancelled run started"
    statuses: dict[str, int] = {}
    never_started = 0
    for run_id in runs:
        record = client.status(run_id)
        assert record is not None
        statuses[record.status.value] = statuses.get(record.status.value, 0) + 1
        if record.started_at is None:  # cancelled while it waited: it must never run
            never_started += 1
            assert record.status == RunStatus.cancelled and record.owner is None
            # Empty, or (a worker took it as the cancel landed) started-and-cancelled at once.
            kinds = [e.event for _, e in client.control.read_events(run_id)]
            assert kinds in ([], [RunEvent.run_started, RunEvent.run_cancelled]), kinds
            continue
        check_log(client, run_id)
        if run_id in answers:
            assert answers[run_id] == (record.status == RunStatus.cancelled), run_id
        else:
            assert record.status == RunStatus.completed, run_id
    assert len(runs) == 300 and sum(statuses.values()) == 300
    assert statuses.get("ERROR", 0) == 0
    print(f"300 runs, 3 workers: {statuses}, never started: {never_started}")
    assert statuses["CANCELLED"] > never_started >= len(cancelled_pending)
    assert statuses["COMPLETED"] > 0
    for agent in ("short", "long"):
        assert wait_for(lambda agent=agent: client.queue.depth(agent) == 0, timeout=10)
    owners = {client.status(r).owner for r in runs if client.status(r).owner}  # type: ignore[union-attr]
    assert len(owners) == 3, "every worker took runs"


def test_reader_that_reconnects_resumes_after_its_last_event(
    client: RunClient, workers: Workers
) -> None:
    workers.start()
    assert wait_for(lambda: "long" in client.agents(), timeout=30)
    run_id = client.submit("long", "go")
    first: list[tuple[int, object]] = []
    for event in client.events(run_id):
        first.append((len(first) + 1, event))
        if len(first) == 25:
            break  # the connection drops
    after = first[-1][0]
    rest = []
    for event in client.events(run_id, after=after):
        rest.append(event)
        if len(rest) == 25:
            assert client.cancel(run_id)
    seen = [e for _, e in first] + rest
    log = [e for _, e in client.control.read_events(run_id)]
    assert [e.model_dump() for e in seen] == [e.model_dump() for e in log], (
        [e.event.value for e in seen[-3:]],
        [e.event.value for e in log[-3:]],
        len(seen),
        len(log),
    )
    assert seen[-1].event == RunEvent.run_cancelled


def test_sigterm_finishes_short_runs_and_cancels_long_ones(
    client: RunClient, workers: Workers
) -> None:
    proc = workers.start("--shutdown-grace", "2")
    assert wait_for(lambda: "long" in client.agents(), timeout=30)
    long_runs = [client.submit("long", f"l{n}") for n in range(5)]
    assert wait_for(
        lambda: all(client.status(r).status == RunStatus.running for r in long_runs),  # type: ignore[union-attr]
        timeout=30,
    )
    short_runs = [client.submit("short", f"s{n}") for n in range(5)]
    assert wait_for(
        lambda: all(client.status(r).started_at for r in short_runs),  # type: ignore[union-attr]
        timeout=30,
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    for run_id in short_runs:
        assert client.status(run_id).status == RunStatus.completed  # type: ignore[union-attr]
        check_log(client, run_id)
    for run_id in long_runs:
        record = client.status(run_id)
        assert record is not None and record.status == RunStatus.cancelled
        assert record.cancel_reason == "shutdown" and record.content and record.stopped
        check_log(client, run_id)


def test_sigkilled_worker_runs_end_worker_lost_and_are_not_rerun(
    client: RunClient, workers: Workers
) -> None:
    doomed = workers.start("--concurrency", "4")
    assert wait_for(lambda: "long" in client.agents(), timeout=30)
    taken = [client.submit("long", f"k{n}") for n in range(4)]
    assert wait_for(
        lambda: all(client.status(r).status == RunStatus.running for r in taken),  # type: ignore[union-attr]
        timeout=30,
    )
    waiting = [client.submit("long", f"w{n}") for n in range(2)]  # read by nobody yet
    time.sleep(0.3)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    killed_at = time.monotonic()
    survivor = workers.start()

    def lost() -> bool:
        return all(client.status(r).status == RunStatus.error for r in taken)  # type: ignore[union-attr]

    assert wait_for(lost, timeout=20, interval=0.1)
    assert time.monotonic() - killed_at < 15
    for run_id in taken:
        record = client.status(run_id)
        assert record is not None and record.error == REASON_WORKER_LOST
        log = client.control.read_events(run_id)
        assert sum(isinstance(e, RunStartedEvent) for _, e in log) == 1, "re-run"
        assert all(not e.is_terminal for _, e in log)  # the dead owner never wrote its end
        ends = list(client.events(run_id))  # followers still get one terminal event
        assert ends[-1].event == RunEvent.run_error
    # The runs nobody had started are served by the survivor.
    assert wait_for(
        lambda: all(client.status(r).status == RunStatus.running for r in waiting),  # type: ignore[union-attr]
        timeout=30,
    )
    for run_id in waiting:
        assert client.cancel(run_id)
    assert wait_for(lambda: client.queue.depth("long") == 0, timeout=30), "entries left"
    assert survivor.poll() is None
