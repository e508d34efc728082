"""A process that streams agent runs on the Redis control plane (tests and benchmarks).

Redis comes from KERN_REDIS_URL and KERN_REDIS_PREFIX. For each run it prints

    RUN <run_id> <unix time>            when the run has started (RunStarted)
    END <unix time> <terminal event JSON>   when it has ended

then ``DONE`` once every run has ended. ``--existing RUN_ID`` executes a run
that someone else created (PENDING) instead of creating new ones.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from kern.agent import Agent
from kern.control.redis import RedisControlPlane
from kern.models.offline import OfflineModel, story
from kern.run.agent import RunEvent, RunOutputEvent
from kern.runner import RunRequest, execute_run


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--words", type=int, default=2000, help="length of the story streamed")
    parser.add_argument("--chunk-delay", type=float, default=0.01)
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="a stalled model")
    parser.add_argument("--existing", help="run this PENDING run instead of creating runs")
    parser.add_argument("--agent-id", default="writer")
    return parser.parse_args()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def emit(event: RunOutputEvent) -> None:
    if event.event == RunEvent.run_started:
        say(f"RUN {event.run_id} {time.time():.6f}")
    elif event.is_terminal:
        say(f"END {time.time():.6f} {event.to_json()}")


async def main(args: argparse.Namespace) -> None:
    control = RedisControlPlane.from_url(os.environ["KERN_REDIS_URL"])
    model = OfflineModel(
        story(args.words), chunk_delay=args.chunk_delay, first_token_delay=args.first_token_delay
    )
    agent = Agent(name="Writer", id=args.agent_id, model=model, control=control)
    try:
        if args.existing:
            await execute_run(
                agent, RunRequest(run_id=args.existing, input="go"), emit, create=False
            )
        else:
            gate = asyncio.Semaphore(args.concurrency)

            async def one() -> None:
                async with gate:
                    await execute_run(agent, agent.request("Tell me a story", stream=True), emit)

            await asyncio.gather(*(one() for _ in range(args.runs)))
        say("DONE")
    finally:
        await asyncio.to_thread(control.close)


if __name__ == "__main__":
    asyncio.run(main(parse()))
