"""The API with ``--dispatch queue``: runs go through Redis to a real `kern worker` process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import check_contract, read_events, serve
from procs.queue_app import agents as served_agents
from redis_support import KERN, kern_env, wait_for

from kern.api.settings import ApiSettings
from kern.control import keys
from kern.control.redis import RedisControlPlane
from kern.run.agent import RunContentEvent, RunEvent

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def worker(redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(KERN), "worker", "procs.queue_app:agents"],
            cwd=TESTS,
            env=kern_env(redis_url, redis_prefix),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_queued_run_streams_from_a_worker_and_a_cancel_reaches_it(
    redis_url: str, redis_prefix: str, worker: subprocess.Popen[bytes]
) -> None:
    plane = RedisControlPlane.from_url(redis_url, prefix=redis_prefix)
    agents = [type(a)(name=a.name, model=a.model) for a in served_agents]  # fresh, unbound
    try:
        served = keys.agents(plane.prefix)  # the worker announces what it serves
        assert await asyncio.to_thread(wait_for, lambda: plane.redis.hexists(served, "long"), 30)
        settings = ApiSettings(dispatch="queue")
        with serve(agents, control=plane, settings=settings) as stack:  # type: ignore[arg-type]
            async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
                short = await client.post(
                    "/agents/short/runs", json={"message": "hi", "stream": False}
                )
                assert short.status_code == 200, short.text
                assert short.json()["status"] == "COMPLETED"
                assert short.json()["content"].startswith("s0 s1")

                messages = []
                async with client.stream(
                    "POST", "/agents/long/runs", json={"message": "go", "run_id": "queued-long"}
                ) as response:
                    assert response.status_code == 200
                    async for message in read_events(response):
                        messages.append(message)
                        if sum(isinstance(m.event, RunContentEvent) for m in messages) == 5:
                            cancel = await client.post(
                                "/agents/long/runs/queued-long/cancel?wait=10"
                            )
                            assert cancel.status_code == 200, cancel.text
                            assert cancel.json()["status"] == "CANCELLED"
                check_contract(messages)
                final = messages[-1].event
                assert final.event == RunEvent.run_cancelled and final.content
                run = (await client.get("/agents/long/runs/queued-long")).json()
                assert run["owner"] != plane.owner_id  # it ran in the worker process
                assert run["content"] == final.content
    finally:
        plane.close()
