"""The Redis run queue with `kern worker` processes.

dispatch   runs dispatched per second (submit -> RunStarted) with 1 and 3 workers,
           and the time from submit to the first content event;
capacity   N concurrent streaming runs in ONE worker process: its memory per run,
           its pub/sub connections, and the cancel of all of them.

    python bench/queue_workers.py dispatch --runs 2000
    python bench/queue_workers.py capacity --runs 5000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import redis
from _common import summary_ms
from redis_common import PrivateRedis

from kern.client import RunClient
from kern.control.redis import RedisControlPlane
from kern.run.agent import RunContentEvent

BENCH = Path(__file__).resolve().parent
KERN = Path(sys.executable).with_name("kern")


def start_workers(
    url: str, count: int, env: dict[str, str], *args: str
) -> list[subprocess.Popen[bytes]]:
    full_env = {**os.environ, "KERN_REDIS_URL": url, **env}
    return [
        subprocess.Popen(
            [str(KERN), "worker", "bench_app:agents", "--log-level", "WARNING", *args],
            cwd=BENCH,
            env=full_env,
        )
        for _ in range(count)
    ]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(60)


def wait_served(client: RunClient) -> None:
    deadline = time.monotonic() + 30
    while "bench" not in client.agents():
        if time.monotonic() > deadline:
            raise SystemExit("no worker came up")
        time.sleep(0.05)
    time.sleep(1.0)  # let every worker reach its first read


def dispatch(runs: int) -> None:
    for workers in (1, 3):
        with PrivateRedis() as server:
            client = RunClient(RedisControlPlane.from_url(server.url))
            # Queue every run first, then start the workers: the figure is how fast
            # workers take runs off the queue, not how fast this process submits.
            client.control.redis.hset(f"{client.control.prefix}:agents", "bench", "{}")
            ids = [client.submit("bench", "go") for _ in range(runs)]
            procs = start_workers(server.url, workers, {"KERN_BENCH_WORDS": "5"})
            try:
                deadline = time.monotonic() + 300
                while any(not (r := client.status(i)) or not r.stopped for i in ids[-50:]):
                    if time.monotonic() > deadline:
                        raise SystemExit("runs did not finish")
                    time.sleep(0.1)
                records = [client.status(i) for i in ids]
                started = [r.started_at for r in records if r and r.started_at]
                rate = len(started) / (max(started) - min(started))
                print(
                    f"{workers} worker(s): {runs} queued runs taken at {rate:,.0f} runs/s "
                    f"(first RunStarted -> last RunStarted)"
                )
                one_at_a_time = []
                for _ in range(200):
                    t0 = time.time()
                    run_id = client.submit("bench", "go")
                    for event in client.events(run_id):
                        if isinstance(event, RunContentEvent):
                            one_at_a_time.append(event.created_at - t0)
                            break
                print(
                    f"  submit -> first content event, one run at a time: "
                    f"{summary_ms(one_at_a_time)}"
                )
            finally:
                stop(procs)
                client.control.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def capacity(runs: int) -> None:
    with PrivateRedis() as server, ExitStack() as stack:
        client = RunClient(RedisControlPlane.from_url(server.url))
        stack.callback(client.control.close)
        env = {"KERN_BENCH_WORDS": "100000", "KERN_BENCH_CHUNK_DELAY": "1.0"}
        (proc,) = start_workers(server.url, 1, env, "--concurrency", str(runs))
        stack.callback(stop, [proc])
        wait_served(client)
        idle = rss_kib(proc.pid)
        t0 = time.monotonic()
        ids = [client.submit("bench", "go") for _ in range(runs)]
        plane = client.control
        while int(plane.redis.zcard(plane.keys.active)) < runs:
            if time.monotonic() - t0 > 600:
                raise SystemExit("not all runs started")
            time.sleep(0.5)
        ramp = time.monotonic() - t0
        time.sleep(5)  # every run streams a few chunks
        busy = rss_kib(proc.pid)
        pubsub = [c for c in redis.Redis.from_url(server.url).client_list(_type="pubsub")]
        cpu = Path(f"/proc/{proc.pid}/stat").read_text().split()
        print(f"{runs} concurrent streaming runs in one worker (started in {ramp:.1f} s)")
        print(
            f"  RSS idle {idle / 1024:.1f} MiB, busy {busy / 1024:.1f} MiB: "
            f"{(busy - idle) / runs:.1f} KiB per run"
        )
        print(
            f"  pub/sub connections to Redis: {len(pubsub)}; worker CPU ticks {cpu[13]}+{cpu[14]}"
        )
        t0 = time.monotonic()
        for run_id in ids:
            client.cancel(run_id)
        while any(
            not (r := client.status(i)) or not r.stopped for i in ids[:: max(1, runs // 100)]
        ):
            time.sleep(0.05)
        print(
            f"  cancelling all {runs} from another process: {time.monotonic() - t0:.1f} s "
            f"until the sampled runs had stopped"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["dispatch", "capacity"])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    dispatch(args.runs) if args.what == "dispatch" else capacity(args.runs)


if __name__ == "__main__":
    main()
