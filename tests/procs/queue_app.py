"""Agents served by the worker processes of tests/test_workers.py."""

from kern.agent import Agent
from kern.models.offline import OfflineModel

short = Agent(
    name="short", model=OfflineModel(" ".join(f"s{n}" for n in range(40)), chunk_delay=0.01)
)
long = Agent(
    name="long", model=OfflineModel(" ".join(f"l{n}" for n in range(3000)), chunk_delay=0.01)
)

agents = [short, long]
