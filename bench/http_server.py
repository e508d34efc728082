"""The server side of the HTTP benchmarks: the agents served, and ``kern serve`` in a subprocess.

agents: "stream" (a long story, one word every 20 ms, like a model at 50 tokens/s)
        "firehose" (a long story, all at once: the API and SSE are the bottleneck)
        "trickle" (the same, but the model yields to the loop between words)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from kern.agent import Agent
from kern.models.offline import OfflineModel, story
from kern.testing.redis_server import free_port

HERE = Path(__file__).parent

agents = [
    Agent(name="stream", model=OfflineModel(story(20_000), chunk_delay=0.02, id="offline-50tps")),
    Agent(name="firehose", model=OfflineModel(story(60_000), id="offline-burst")),
    Agent(name="trickle", model=OfflineModel(story(60_000), chunk_delay=1e-9, id="offline-yield")),
]


@contextlib.contextmanager
def kern_serve(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``kern serve http_server:agents`` on a free port (its own process); yields the URL."""
    port = free_port()
    command = [
        sys.executable,
        "-c",
        "from kern.cli import main; main()",
        "serve",
        "http_server:agents",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]
    process = subprocess.Popen(command, cwd=HERE, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"kern serve exited with {process.returncode}")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise SystemExit("kern serve did not become healthy")
