"""Agents served by the queue benchmarks' workers (``bench_app:agents`` from bench/)."""

import os

from kern.agent import Agent
from kern.models.offline import OfflineModel

words = int(os.environ.get("KERN_BENCH_WORDS", "5"))
delay = float(os.environ.get("KERN_BENCH_CHUNK_DELAY", "0"))
agents = [
    Agent(
        name="bench", model=OfflineModel(" ".join(f"w{n}" for n in range(words)), chunk_delay=delay)
    )
]
