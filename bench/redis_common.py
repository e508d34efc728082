"""Shared by the Redis benchmarks: a private redis-server, worker processes, percentiles."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from kern.testing.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "procs" / "stream_worker.py"


PrivateRedis = RedisServer
"""A private redis-server (no persistence: clean INFO commandstats)."""


@dataclass
class Worker:
    """A stream_worker.py process; its RUN and END lines, time-stamped by the worker."""

    proc: subprocess.Popen[str]
    started: queue.Queue[str] = field(default_factory=queue.Queue)
    ended: dict[str, tuple[float, str]] = field(default_factory=dict)  # run id -> (t, event)
    done: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def spawn(cls, url: str, prefix: str, *args: str) -> Worker:
        env = dict(os.environ, KERN_REDIS_URL=url, KERN_REDIS_PREFIX=prefix, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args], env=env, stdout=subprocess.PIPE, text=True
        )
        worker = cls(proc)
        threading.Thread(target=worker._read, daemon=True).start()
        return worker

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "RUN":
                self.started.put(rest.split()[0])
            elif kind == "END":
                stamp, payload = rest.split(" ", 1)
                run_id = payload.split('"run_id":"', 1)[1].split('"', 1)[0]
                event = payload.split('"event":"', 1)[1].split('"', 1)[0]
                self.ended[run_id] = (float(stamp), event)
            elif kind == "DONE":
                self.done.set()

    def wait_end(self, run_id: str, timeout: float = 30) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while run_id not in self.ended:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not end")
            time.sleep(0.0005)
        return self.ended[run_id]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(names), 500):
        client.unlink(*names[start : start + 500])
    client.close()
