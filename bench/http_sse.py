"""SSE throughput to one client: events per second from ``kern serve`` to one reader.

The model is never the bottleneck: ``firehose`` emits its whole story at once
(the feed's batching at work), ``trickle`` yields to the event loop between
words (one event per loop turn, the worst case for batching). Counted on the
client with the SSE parser only (``--parse-json`` also validates every
event into its pydantic class, as `kern run` does). Also reported: replaying
a finished run's log (``GET .../events``).

    python bench/http_sse.py --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from http_server import kern_serve

from kern.api.sse import SseParser
from kern.run.agent import event_from_json


async def read(response: httpx.Response, parse_json: bool) -> tuple[int, str]:
    parser = SseParser()
    count = 0
    last = ""
    async for line in response.aiter_lines():
        message = parser.feed(line)
        if message is None:
            continue
        count += 1
        last = message.event or ""
        if parse_json:
            event_from_json(message.data)
    return count, last


async def one_run(url: str, agent: str, parse_json: bool) -> tuple[float, float, str]:
    """(events/s live, events/s replay, run id)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        started = time.perf_counter()
        async with client.stream("POST", f"/agents/{agent}/runs", data={"message": "go"}) as r:
            run_id = r.headers["x-run-id"]
            count, last = await read(r, parse_json)
        live = count / (time.perf_counter() - started)
        assert last == "RunCompleted", last
        started = time.perf_counter()
        async with client.stream("GET", f"/agents/{agent}/runs/{run_id}/events") as r:
            replayed, _ = await read(r, parse_json)
        replay = replayed / (time.perf_counter() - started)
        assert replayed == count
    return live, replay, f"{count} events"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parse-json", action="store_true")
    args = parser.parse_args()
    with kern_serve() as url:
        for agent in ("firehose", "trickle"):
            best_live = best_replay = 0.0
            size = ""
            for _ in range(args.repeat):
                live, replay, size = await one_run(url, agent, args.parse_json)
                best_live, best_replay = max(best_live, live), max(best_replay, replay)
            print(
                f"{agent:9s} ({size}, best of {args.repeat}): live {best_live:,.0f} events/s, "
                f"replay {best_replay:,.0f} events/s"
                + (" [client parses JSON]" if args.parse_json else "")
            )


if __name__ == "__main__":
    asyncio.run(main())
