"""Redis commands per run, from INFO commandstats, at two run lengths.

Runs R runs of a short and of a long story (same number of runs) on a private
redis-server and divides the commands Redis executed by R. Counted twice:
commands *sent* by the client (what crosses the network; EVALSHA counts once)
and everything Redis ran (commandstats also counts the calls inside the Lua
scripts). Both should be the same constant at both lengths: no command per
chunk. The listener thread's periodic work (heartbeat, reconcile, sweep) is
per process and per second, not per chunk: it is shown on its own line.

    .venv/bin/python bench/redis_commands.py [--runs 200]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_common import PrivateRedis

from kern.agent import Agent
from kern.control.redis import RedisControlPlane
from kern.models.offline import OfflineModel, story


def count_sent(client: redis.Redis) -> dict[str, int]:
    """Commands the caller's threads send through ``client`` (not the listener thread's)."""
    sent: dict[str, int] = {}
    execute_command, pipeline = client.execute_command, client.pipeline

    def note(name: object) -> None:
        if not threading.current_thread().name.startswith("kern-redis-listener"):
            key = str(name).lower()
            sent[key] = sent.get(key, 0) + 1

    def counted_execute(*args: Any, **options: Any) -> Any:
        note(args[0])
        return execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def counted_pipeline(*args: Any, **options: Any) -> Any:
        pipe = pipeline(*args, **options)
        execute = pipe.execute

        def counted(*a: Any, **kw: Any) -> Any:
            for command in pipe.command_stack:
                note(command[0][0])
            return execute(*a, **kw)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe

    client.execute_command = counted_execute  # type: ignore[method-assign]
    client.pipeline = counted_pipeline  # type: ignore[method-assign]
    return sent


def commandstats(client: redis.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


def measure(url: str, runs: int, words: int) -> tuple[dict[str, int], dict[str, int], float]:
    admin = redis.Redis.from_url(url)
    plane = RedisControlPlane.from_url(url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    agent = Agent(name="Writer", model=OfflineModel(story(words)), control=plane)
    agent.run("warm up")  # scripts loaded, listener started
    sent = count_sent(plane.redis)
    admin.config_resetstat()
    began = time.perf_counter()
    for _ in range(runs):
        for _event in agent.run("go", stream=True):
            pass
    took = time.perf_counter() - began
    stats = commandstats(admin)
    sent_by_runs = dict(sent)
    plane.close()
    admin.close()
    stats.pop("config|resetstat", None)
    stats.pop("info", None)
    return stats, sent_by_runs, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with PrivateRedis() as server:
        rows = {words: measure(server.url, args.runs, words) for words in (20, 5000)}
    print(f"Redis commands per run, {args.runs} runs each (private redis-server)")
    header = "".join(f"{f'{w} words':>14}" for w in rows)
    print(f"{'executed by Redis':<24}{header}")
    names = sorted({n for stats, _, _ in rows.values() for n in stats})
    for name in names:
        cells = "".join(f"{stats.get(name, 0) / args.runs:>14.2f}" for stats, _, _ in rows.values())
        print(f"  {name:<22}{cells}")
    total = "".join(f"{sum(stats.values()) / args.runs:>14.2f}" for stats, _, _ in rows.values())
    print(f"  {'all':<22}{total}")
    print(f"{'sent by the run path':<24}")
    names = sorted({n for _, sent, _ in rows.values() for n in sent})
    for name in names:
        cells = "".join(f"{sent.get(name, 0) / args.runs:>14.2f}" for _, sent, _ in rows.values())
        print(f"  {name:<22}{cells}")
    total = "".join(f"{sum(sent.values()) / args.runs:>14.2f}" for _, sent, _ in rows.values())
    print(f"  {'all':<22}{total}")
    chunks = "".join(f"{w:>14}" for w in rows)
    seconds = "".join(f"{took:>14.2f}" for _, _, took in rows.values())
    print(f"{'chunks per run':<24}{chunks}\n{'seconds in all':<24}{seconds}")
    print("(executed minus sent: calls inside the Lua scripts, plus the listener thread's")
    print(" periodic heartbeat / reconcile / sweep, which scale with time, not chunks)")


if __name__ == "__main__":
    main()
