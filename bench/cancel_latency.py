"""Cancel latency in one process: `cancel_run()` call -> terminal event seen by the reader.

Each run streams on kern's loop and is read by its own thread; a separate
thread calls `cancel_run` once the run is streaming (or, in ``stalled`` mode,
once it started and the model is silent) and the reader stamps the
`RunCancelled` event.

    python bench/cancel_latency.py --model offline --mode streaming --runs 1000
    python bench/cancel_latency.py --model responses --mode stalled --runs 1000
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from contextlib import ExitStack

from _common import server_process, summary_ms

from kern.agent import Agent
from kern.control.memory import MemoryControlPlane
from kern.models.base import Model
from kern.models.offline import OfflineModel
from kern.models.openai import OpenAIChat, OpenAIResponses
from kern.run.agent import RunEvent


def make_model(kind: str, stall: float, stack: ExitStack) -> Model:
    chunk_delay = 0.002
    if kind == "offline":
        return OfflineModel(chunk_delay=chunk_delay, first_token_delay=stall)
    base_url = stack.enter_context(server_process(chunk_delay, stall))
    cls = OpenAIResponses if kind == "responses" else OpenAIChat
    return cls(base_url=base_url, api_key="bench")


def measure(agent: Agent, runs: int, concurrency: int, stalled: bool) -> list[float]:
    latencies: list[float] = []
    to_cancel: queue.SimpleQueue[tuple[str, list[float]] | None] = queue.SimpleQueue()
    lock = threading.Lock()
    remaining = iter(range(runs))

    def canceller() -> None:
        while (item := to_cancel.get()) is not None:
            run_id, stamp = item
            stamp.append(time.perf_counter())
            if not agent.cancel_run(run_id):
                raise SystemExit(f"cancel of {run_id} was refused")

    def reader() -> None:
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            stamp: list[float] = []
            contents = 0
            for event in agent.run("story", stream=True):
                if event.event == RunEvent.run_started and stalled:
                    to_cancel.put((event.run_id, stamp))
                elif event.event == RunEvent.run_content:
                    contents += 1
                    if contents == 5 and not stalled:
                        to_cancel.put((event.run_id, stamp))
                elif event.is_terminal:
                    seen = time.perf_counter()
                    if event.event != RunEvent.run_cancelled:
                        raise SystemExit(f"run ended {event.event}, not cancelled")
                    latencies.append(seen - stamp[0])

    cancel_thread = threading.Thread(target=canceller)
    cancel_thread.start()
    readers = [threading.Thread(target=reader) for _ in range(concurrency)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    to_cancel.put(None)
    cancel_thread.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["offline", "responses", "chat"], default="offline")
    parser.add_argument("--mode", choices=["streaming", "stalled"], default="streaming")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    stalled = args.mode == "stalled"
    with ExitStack() as stack:
        model = make_model(args.model, 30.0 if stalled else 0.0, stack)
        agent = Agent(name="bench", model=model, control=MemoryControlPlane())
        measure(agent, min(20, args.runs), args.concurrency, stalled)  # warm-up
        latencies = measure(agent, args.runs, args.concurrency, stalled)
    print(
        f"cancel latency, model={args.model} mode={args.mode} "
        f"concurrency={args.concurrency}: {summary_ms(latencies)}"
    )


if __name__ == "__main__":
    main()
