"""The run routes over a real server: the SSE contract, stream=false, background, replay."""

from __future__ import annotations

import asyncio

import httpx
from api_support import (
    SHORT_TEXT,
    SeqMessage,
    check_contract,
    collect,
    read_events,
    serve,
    wait_until,
)

from kern.api.settings import ApiSettings
from kern.run.agent import RunCancelledEvent, RunCompletedEvent, RunContentEvent
from kern.run.base import RunStatus


def _content(messages: list[SeqMessage]) -> str:
    return "".join(m.event.content for m in messages if isinstance(m.event, RunContentEvent))


async def test_stream_follows_the_sse_contract() -> None:
    with serve() as stack:
        async with (
            httpx.AsyncClient(base_url=stack.url, timeout=10) as client,
            client.stream("POST", "/agents/fast/runs", json={"message": "hi"}) as r,
        ):
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            run_id = r.headers["x-run-id"]
            messages = await collect(r)
    check_contract(messages)
    final = messages[-1].event
    assert isinstance(final, RunCompletedEvent)
    assert final.status == RunStatus.completed
    assert final.content == _content(messages) == SHORT_TEXT
    assert {m.event.run_id for m in messages} == {run_id}
    assert {m.event.agent_id for m in messages} == {"fast"}


async def test_form_body_with_chosen_ids() -> None:
    form = {"message": "hi", "run_id": "my-run.1", "session_id": "s1", "user_id": "u1"}
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            async with client.stream("POST", "/agents/fast/runs", data=form) as r:
                messages = await collect(r)
            record = stack.control.get("my-run.1")
    check_contract(messages)
    assert messages[0].event.run_id == "my-run.1"
    assert messages[0].event.session_id == "s1"
    assert record is not None and record.user_id == "u1"


async def test_stream_false_returns_the_run_output() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            as_json = await client.post(
                "/agents/fast/runs", json={"message": "hi", "stream": False}
            )
            as_form = await client.post(
                "/agents/fast/runs", data={"message": "hi", "stream": "false"}
            )
    for response in (as_json, as_form):
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "COMPLETED"
        assert body["content"] == SHORT_TEXT
        assert body["agent_id"] == "fast"
        assert body["model"] == "offline-fast"


async def test_background_run_is_accepted_then_readable() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            accepted = await client.post(
                "/agents/slow/runs", json={"message": "hi", "background": True}
            )
            assert accepted.status_code == 202
            run_id = accepted.json()["run_id"]
            assert accepted.json()["status"] in ("PENDING", "RUNNING")
            await asyncio.sleep(0.3)
            running = (await client.get(f"/agents/slow/runs/{run_id}")).json()
            assert running["status"] == "RUNNING"
            assert running["content"]  # the content so far, before the run stopped
            assert running["owner"] == stack.control.owner_id
            assert running["started_at"] is not None and running["ended_at"] is None
            cancelled = await client.post(f"/agents/slow/runs/{run_id}/cancel", params={"wait": 5})
            after = (await client.get(f"/agents/slow/runs/{run_id}")).json()
    assert cancelled.json()["stopped"] is True
    assert after["status"] == "CANCELLED" and after["stopped"] is True
    assert after["content"].startswith(running["content"])
    assert after["ended_at"] is not None


async def test_events_replay_and_resume_without_loss_or_duplicates() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            run_id = (
                await client.post("/agents/slow/runs", json={"message": "hi", "background": True})
            ).json()["run_id"]
            url = f"/agents/slow/runs/{run_id}/events"
            first: list[SeqMessage] = []
            async with client.stream("GET", url) as r:
                async for message in read_events(r):
                    first.append(message)
                    if len(first) == 8:
                        break  # the connection drops mid-run
            # Resume on the live run with the header, cancel it meanwhile.
            second: list[SeqMessage] = []
            headers = {"Last-Event-ID": str(first[-1].id)}
            async with client.stream("GET", url, headers=headers) as r:
                async for message in read_events(r):
                    second.append(message)
                    if len(second) == 5:
                        await client.post(f"/agents/slow/runs/{run_id}/cancel")
            # Once it ended: a full replay (from the log), and a resume with the query param.
            async with client.stream("GET", url) as r:
                replay = await collect(r)
            async with client.stream("GET", url, params={"last_event_id": 3}) as r:
                tail = await collect(r)
            async with client.stream(
                "GET", url, headers={"Last-Event-ID": str(replay[-1].id)}
            ) as r:
                nothing = await collect(r)
    joined = first + second
    check_contract(joined)
    assert isinstance(joined[-1].event, RunCancelledEvent)
    assert joined[-1].event.content == _content(joined)
    assert [(m.id, m.event) for m in replay] == [(m.id, m.event) for m in joined]
    assert [m.id for m in tail] == [m.id for m in joined][3:]
    assert nothing == []


async def test_many_readers_see_the_same_stream() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            run_id = (
                await client.post("/agents/slow/runs", json={"message": "hi", "background": True})
            ).json()["run_id"]

            async def read() -> list[SeqMessage]:
                async with client.stream("GET", f"/agents/slow/runs/{run_id}/events") as r:
                    return await collect(r)

            readers = [asyncio.ensure_future(read()) for _ in range(5)]
            await wait_until(lambda: len(stack.server.app.state.kern.hub) == 1)
            await asyncio.sleep(0.2)
            await client.post(f"/agents/slow/runs/{run_id}/cancel")
            results = await asyncio.gather(*readers)
    for messages in results:
        check_contract(messages)
        assert [(m.id, m.event) for m in messages] == [(m.id, m.event) for m in results[0]]


async def test_quiet_stream_sends_keepalives() -> None:
    with serve(settings=ApiSettings(keepalive=0.1)) as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            lines: list[str] = []
            async with client.stream("POST", "/agents/quiet/runs", json={"message": "hi"}) as r:
                run_id = r.headers["x-run-id"]
                async for line in r.aiter_lines():
                    lines.append(line)
                    if lines.count(": keepalive") == 2:
                        break
            await client.post(f"/agents/quiet/runs/{run_id}/cancel")
    assert lines[0] == "id: 1"


async def test_list_agents() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            response = await client.get("/agents")
    assert response.status_code == 200
    assert [a["id"] for a in response.json()] == ["slow", "fast", "quiet"]
    assert response.json()[1] == {
        "id": "fast",
        "name": "fast",
        "description": None,
        "model": "offline-fast",
    }
