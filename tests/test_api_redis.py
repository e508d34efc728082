"""The HTTP API on the Redis control plane when Redis itself stops and comes back."""

from __future__ import annotations

import asyncio
import time

import httpx
from api_support import make_agents, serve
from redis_support import unique_prefix

from kern.control.redis import RedisControlPlane
from kern.testing.redis_server import RedisServer


async def test_redis_down_is_503_and_the_api_recovers_when_it_returns(
    private_redis: RedisServer,
) -> None:
    plane = RedisControlPlane.from_url(private_redis.url, prefix=unique_prefix())
    try:
        with serve(make_agents(plane), control=plane) as stack:  # type: ignore[arg-type]
            async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
                before = await client.post(
                    "/agents/fast/runs", json={"message": "hi", "stream": False}
                )
                assert before.status_code == 200 and before.json()["status"] == "COMPLETED"
                run_id = before.json()["run_id"]

                await asyncio.to_thread(private_redis.stop)
                down = [
                    await client.post("/agents/fast/runs", json={"message": "hi"}),
                    await client.get(f"/agents/fast/runs/{run_id}"),
                    await client.post(f"/agents/fast/runs/{run_id}/cancel"),
                    await client.get("/health"),
                ]
                for response in down:
                    assert response.status_code == 503, response.text
                    assert "detail" in response.json() or "control_plane" in response.json()

                await asyncio.to_thread(private_redis.start)
                deadline = time.monotonic() + 20
                while (await client.get("/health")).status_code != 200:
                    assert time.monotonic() < deadline, "the API did not recover"
                    await asyncio.sleep(0.2)
                after = await client.post(
                    "/agents/fast/runs", json={"message": "hi", "stream": False}
                )
                assert after.status_code == 200 and after.json()["status"] == "COMPLETED"
                cancel = await client.post(f"/agents/fast/runs/{after.json()['run_id']}/cancel")
                assert cancel.status_code == 409 and cancel.json()["status"] == "COMPLETED"
    finally:
        plane.close()


async def test_huge_last_event_id_is_422_on_redis(redis_url: str, redis_prefix: str) -> None:
    """A Redis stream id is two 64-bit integers: a larger Last-Event-ID must not reach XRANGE."""
    plane = RedisControlPlane.from_url(redis_url, prefix=redis_prefix)
    try:
        with serve(make_agents(plane), control=plane) as stack:  # type: ignore[arg-type]
            async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
                done = await client.post(
                    "/agents/fast/runs", json={"message": "hi", "stream": False}
                )
                assert done.status_code == 200 and done.json()["status"] == "COMPLETED"
                url = f"/agents/fast/runs/{done.json()['run_id']}/events"
                for big in (str(2**63), str(2**64), "9" * 30):
                    for response in (
                        await client.get(url, headers={"Last-Event-ID": big}),
                        await client.get(url, params={"last_event_id": big}),
                    ):
                        assert response.status_code == 422, response.text
                        assert response.headers["content-type"] == "application/json"
                largest = await client.get(url, headers={"Last-Event-ID": str(2**63 - 1)})
                assert largest.status_code == 200 and largest.text == ""
                replay = await client.get(url, params={"last_event_id": 0})
                assert replay.status_code == 200 and "RunCompleted" in replay.text
    finally:
        plane.close()
