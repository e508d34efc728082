"""Streamed chunks per second through the real openai SDK and the local server.

Three figures over the same stream (chunk_delay 0, one word per chunk):
  raw SDK      iterating the SDK's stream directly, no kern at all;
  kern run     the same stream through kern's run loop (events, cancel machinery);
  flag check   the cost of the per-chunk cancel check alone (a local flag read),
               as a share of kern's time per chunk.

    python bench/chunk_throughput.py --words 20000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import timeit

import openai

from kern.agent import Agent
from kern.context import RunHandle
from kern.control.memory import MemoryControlPlane
from kern.models.openai import OpenAIResponses
from kern.run.agent import RunEvent
from kern.testing import LocalOpenAIServer, ServerScript


async def raw_sdk(base_url: str) -> int:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench")
    count = 0
    async with await client.responses.create(model="m", input="go", stream=True) as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                count += 1
    await client.close()
    return count


def kern_run(agent: Agent) -> int:
    return sum(1 for e in agent.run("go", stream=True) if e.event == RunEvent.run_content)


def flag_check_seconds() -> float:
    loop = asyncio.new_event_loop()
    handle = RunHandle("r", "a", loop)
    number = 1_000_000
    seconds = timeit.timeit(lambda: handle.cancel_requested, number=number)
    baseline = timeit.timeit(lambda: None, number=number)
    loop.close()
    return max(0.0, seconds - baseline) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    text = " ".join(f"w{n}" for n in range(args.words))
    with LocalOpenAIServer(ServerScript(text=text)) as server:
        agent = Agent(
            name="bench",
            model=OpenAIResponses(base_url=server.base_url, api_key="bench"),
            control=MemoryControlPlane(),
        )
        raw_rates, kern_rates = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            n = asyncio.run(raw_sdk(server.base_url))
            raw_rates.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            n = kern_run(agent)
            kern_rates.append(n / (time.perf_counter() - t0))
    check = flag_check_seconds()
    raw, kern = statistics.median(raw_rates), statistics.median(kern_rates)
    print(
        f"chunks per stream: {args.words}, repeats: {args.repeat}, "
        f"threads: {threading.active_count()}"
    )
    print(
        f"raw SDK:  median {raw:,.0f} chunks/s "
        f"(min {min(raw_rates):,.0f}, max {max(raw_rates):,.0f})"
    )
    print(
        f"kern run: median {kern:,.0f} chunks/s "
        f"(min {min(kern_rates):,.0f}, max {max(kern_rates):,.0f})"
        f" = {kern / raw:.1%} of raw"
    )
    per_chunk = 1 / kern
    print(
        f"cancel flag check: {check * 1e9:.0f} ns per chunk = {check / per_chunk:.3%} of kern's "
        f"{per_chunk * 1e6:.1f} us per chunk"
    )


if __name__ == "__main__":
    main()
