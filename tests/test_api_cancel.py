"""Cancelling over HTTP: from another client, repeated, too late, unknown, on disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
from api_support import (
    SeqMessage,
    check_contract,
    collect,
    read_events,
    serve,
    status_of,
    wait_until,
)

from kern.api.settings import ApiSettings
from kern.run.agent import RunCancelledEvent, RunContentEvent
from kern.run.base import RunStatus


async def _background(client: httpx.AsyncClient, agent_id: str) -> str:
    body = {"message": "go", "background": True}
    response = await client.post(f"/agents/{agent_id}/runs", json=body)
    assert response.status_code == 202
    run_id: str = response.json()["run_id"]
    return run_id


async def test_cancel_from_a_second_client_ends_the_open_stream() -> None:
    with serve() as stack:
        async with (
            httpx.AsyncClient(base_url=stack.url, timeout=10) as streamer,
            httpx.AsyncClient(base_url=stack.url, timeout=10) as canceller,
        ):
            messages: list[SeqMessage] = []
            async with streamer.stream("POST", "/agents/slow/runs", json={"message": "go"}) as r:
                run_id = r.headers["x-run-id"]
                async for message in read_events(r):
                    messages.append(message)
                    if len(messages) == 6:
                        sent = time.monotonic()
                        cancel = await canceller.post(f"/agents/slow/runs/{run_id}/cancel")
                        assert cancel.status_code == 200
                        assert cancel.json()["status"] == "CANCELLED"
            latency = time.monotonic() - sent
            repeat = await canceller.post(f"/agents/slow/runs/{run_id}/cancel")
            stored = (await canceller.get(f"/agents/slow/runs/{run_id}")).json()
    check_contract(messages)
    final = messages[-1].event
    assert isinstance(final, RunCancelledEvent)
    assert final.status == RunStatus.cancelled
    partial = "".join(m.event.content for m in messages if isinstance(m.event, RunContentEvent))
    assert final.content == partial and partial
    assert latency < 1.0
    assert repeat.status_code == 200 and repeat.json()["status"] == "CANCELLED"
    assert stored["status"] == "CANCELLED" and stored["content"] == partial


async def test_cancel_after_completion_is_a_conflict() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            done = await client.post("/agents/fast/runs", json={"message": "hi", "stream": False})
            run_id = done.json()["run_id"]
            response = await client.post(f"/agents/fast/runs/{run_id}/cancel")
    assert response.status_code == 409
    assert response.json()["status"] == "COMPLETED"
    assert response.json()["run_id"] == run_id


async def test_unknown_run_agent_or_another_agents_run_is_not_found() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            run_id = await _background(client, "slow")
            unknown_run = await client.post("/agents/slow/runs/no-such-run/cancel")
            unknown_agent = await client.post(f"/agents/nobody/runs/{run_id}/cancel")
            other_agent = await client.post(f"/agents/fast/runs/{run_id}/cancel")
            other_get = await client.get(f"/agents/fast/runs/{run_id}")
            other_events = await client.get(f"/agents/fast/runs/{run_id}/events")
            still = stack.control.get(run_id)
            await client.post(f"/agents/slow/runs/{run_id}/cancel")
    for response in (unknown_run, unknown_agent, other_agent, other_get, other_events):
        assert response.status_code == 404, response.text
        assert "detail" in response.json()
    assert still is not None and still.status == RunStatus.running


async def test_cancel_wakes_a_run_waiting_for_its_first_token() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            run_id = await _background(client, "quiet")  # 30 s before its first token
            await wait_until(lambda: status_of(stack.control, run_id) == RunStatus.running)
            started = time.monotonic()
            response = await client.post(f"/agents/quiet/runs/{run_id}/cancel", params={"wait": 5})
            elapsed = time.monotonic() - started
            async with client.stream("GET", f"/agents/quiet/runs/{run_id}/events") as r:
                messages = await collect(r)
    assert response.status_code == 200
    assert response.json()["stopped"] is True
    assert elapsed < 1.0
    check_contract(messages)
    assert [m.event.event for m in messages] == ["RunStarted", "RunCancelled"]


async def test_disconnect_leaves_the_run_going_by_default() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            async with client.stream("POST", "/agents/slow/runs", json={"message": "go"}) as r:
                run_id = r.headers["x-run-id"]
                async for message in read_events(r):
                    if message.id == 3:
                        break
            await asyncio.sleep(0.3)
            record = stack.control.get(run_id)
            await client.post(f"/agents/slow/runs/{run_id}/cancel")
    assert record is not None and record.status == RunStatus.running


async def test_cancel_on_disconnect_cancels_the_run() -> None:
    with serve(settings=ApiSettings(cancel_on_disconnect=True)) as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            async with client.stream("POST", "/agents/slow/runs", json={"message": "go"}) as r:
                streamed = r.headers["x-run-id"]
                async for message in read_events(r):
                    if message.id == 3:
                        break
            waiting = "waited-run"
            with contextlib.suppress(httpx.ReadTimeout):  # the client gives up waiting
                await client.post(
                    "/agents/slow/runs",
                    json={"message": "go", "stream": False, "run_id": waiting},
                    timeout=0.5,
                )
            for run_id in (streamed, waiting):
                await wait_until(
                    lambda r=run_id: status_of(stack.control, r) == RunStatus.cancelled
                )
                record = stack.control.get(run_id)
                assert record is not None and record.status == RunStatus.cancelled
                assert record.cancel_reason == "client_disconnected"


async def test_stopping_the_server_cancels_its_runs() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            run_id = await _background(client, "slow")
            await asyncio.sleep(0.1)
    record = stack.control.get(run_id)
    assert record is not None and record.status == RunStatus.cancelled
    assert record.cancel_reason == "server_shutdown" and record.stopped and record.content
