"""Chunk throughput: the same streaming runs on the memory and the Redis control plane.

The model sends as fast as it can (OfflineModel, no delay), so the figure is
the run loop's ceiling and what the control plane costs it. Invariant 4 (no
Redis command per chunk) means the two backends should stream at about the
same rate; with ``record_events`` (the event log the HTTP API replays), Redis
gets one batched append per 20 ms, still none per chunk.

    .venv/bin/python bench/redis_throughput.py [--url redis://...] [--words 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_common import PrivateRedis, delete_prefix

from kern.agent import Agent
from kern.control.base import ControlPlane
from kern.control.memory import MemoryControlPlane
from kern.control.redis import RedisControlPlane
from kern.models.offline import OfflineModel, story
from kern.run.agent import RunEvent, RunOutputEvent
from kern.runner import execute_run


async def chunks_per_second(
    control: ControlPlane, words: int, concurrent: int, record: bool
) -> float:
    agent = Agent(name="Writer", model=OfflineModel(story(words)), control=control)
    count = 0

    def emit(event: RunOutputEvent) -> None:
        nonlocal count
        if event.event == RunEvent.run_content:
            count += 1

    async def one() -> None:
        await execute_run(agent, agent.request("go", stream=True), emit, record_events=record)

    await one()  # warm up (scripts loaded, listener started)
    count = 0
    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrent)))
    return count / (time.perf_counter() - began)


def median_rate(control: ControlPlane, words: int, concurrent: int, record: bool) -> float:
    """The median of REPEAT measurements (one is noisy on a shared 2-core machine)."""
    rates = [
        asyncio.run(chunks_per_second(control, words, concurrent, record)) for _ in range(REPEAT)
    ]
    return statistics.median(rates)


REPEAT = 5


def run(url: str, words: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    redis_plane = RedisControlPlane.from_url(url, prefix=prefix)
    print(f"chunks/s, {words} words per run, model without delay, median of {REPEAT} ({url})")
    print(f"{'runs at once':<14}{'event log':<11}{'memory':>12}{'redis':>12}{'redis/memory':>14}")
    try:
        for concurrent in (1, 10):
            for record in (False, True):
                memory = median_rate(MemoryControlPlane(), words, concurrent, record)
                on_redis = median_rate(redis_plane, words, concurrent, record)
                print(
                    f"{concurrent:<14}{'yes' if record else 'no':<11}{memory:>12,.0f}"
                    f"{on_redis:>12,.0f}{on_redis / memory:>14.2f}",
                    flush=True,
                )
    finally:
        redis_plane.close()
        delete_prefix(url, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--words", type=int, default=100_000)
    args = parser.parse_args()
    if args.url:
        run(args.url, args.words)
    else:
        with PrivateRedis() as server:
            run(server.url, args.words)


if __name__ == "__main__":
    main()
