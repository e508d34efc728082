"""Cross-process cancel latency on Redis: cancel() called here -> terminal event in the worker.

A worker process (tests/procs/stream_worker.py) keeps N runs streaming; this
process cancels one at a time through its own RedisControlPlane and measures
from just before ``cancel()`` to the worker's time stamp on the run's
terminal event (same host, same clock). Cancelled runs are replaced, so N
stay in flight. Scenarios: N = 1, 100, 1,000 streaming runs, and 100 runs
whose model is stalled (sends nothing until cancelled).

    .venv/bin/python bench/redis_cancel_latency.py [--url redis://...] [--samples 200]

Without --url a private redis-server is started (needs redis-server on PATH).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_common import PrivateRedis, Worker, delete_prefix, percentile

from kern.control.redis import RedisControlPlane

# (label, in flight, worker arguments). Chunk delays keep one worker process at
# about 10,000 chunks/s in total, so the figure is the control plane's, not a
# saturated event loop's.
SCENARIOS = [
    ("1 streaming run", 1, ["--chunk-delay", "0.01"]),
    ("100 streaming runs", 100, ["--chunk-delay", "0.01"]),
    ("1,000 streaming runs", 1000, ["--chunk-delay", "0.1"]),
    ("100 runs, model stalled", 100, ["--first-token-delay", "3600"]),
]


def measure(url: str, in_flight: int, samples: int, args: list[str]) -> list[float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    total = in_flight + samples
    worker = Worker.spawn(url, prefix, "--runs", str(total), "--concurrency", str(in_flight), *args)
    plane = RedisControlPlane.from_url(url, prefix=prefix)
    latencies: list[float] = []
    try:
        running = [worker.started.get(timeout=120) for _ in range(in_flight)]
        time.sleep(1.0)  # let every run get going
        for _ in range(samples):
            run_id = running.pop(0)
            began = time.time()
            if not plane.cancel(run_id).won:
                raise RuntimeError(f"run {run_id} ended before it was cancelled")
            ended, event = worker.wait_end(run_id)
            if event != "RunCancelled":
                raise RuntimeError(f"run {run_id} ended {event}")
            latencies.append(ended - began)
            running.append(worker.started.get(timeout=60))  # its replacement
            time.sleep(0.01)
        for run_id in running:
            plane.cancel(run_id)
        worker.done.wait(60)
    finally:
        plane.close()
        worker.close()
        delete_prefix(url, prefix)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--samples", type=int, default=200, help="cancels per scenario")
    args = parser.parse_args()
    if args.url:
        run(args.url, args.samples)
    else:
        with PrivateRedis() as server:
            run(server.url, args.samples)


def run(url: str, samples: int) -> None:
    print(f"cross-process cancel -> terminal event, {samples} cancels per scenario ({url})")
    print(f"{'scenario':<28}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'mean ms':>9}")
    for label, in_flight, worker_args in SCENARIOS:
        ms = [x * 1000 for x in measure(url, in_flight, samples, worker_args)]
        print(
            f"{label:<28}{statistics.median(ms):>9.2f}{percentile(ms, 99):>9.2f}"
            f"{max(ms):>9.2f}{statistics.mean(ms):>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
