"""Errors over HTTP: auth, bad input, body limit, control plane down; all JSON, documented."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from api_support import make_agents, serve

from kern.api.settings import ApiSettings
from kern.control.base import CancelResult, RunRecord
from kern.control.memory import MemoryControlPlane
from kern.exceptions import ControlPlaneUnavailable

KEY = "s3cret-key"


class FlakyPlane(MemoryControlPlane):
    """A memory plane that can be switched off (503) or made to fail unexpectedly (500)."""

    down = False
    broken = False

    def _check(self) -> None:
        if self.down:
            raise ControlPlaneUnavailable("redis://127.0.0.1:1: connection refused")
        if self.broken:
            raise ValueError("boom")

    def create(self, record: RunRecord) -> None:
        self._check()
        super().create(record)

    def get(self, run_id: str) -> RunRecord | None:
        self._check()
        return super().get(run_id)

    def cancel(
        self, run_id: str, *, agent_id: str | None = None, reason: str = "cancelled"
    ) -> CancelResult:
        self._check()
        return super().cancel(run_id, agent_id=agent_id, reason=reason)


async def test_key_is_required_everywhere_but_health() -> None:
    with serve(settings=ApiSettings(security_key=KEY)) as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            good = {"Authorization": f"Bearer {KEY}"}
            bad = {"Authorization": "Bearer wrong"}
            assert (await client.get("/health")).status_code == 200
            for method, url in [
                ("GET", "/agents"),
                ("POST", "/agents/fast/runs"),
                ("POST", "/agents/fast/runs/r1/cancel"),
                ("GET", "/agents/fast/runs/r1"),
                ("GET", "/agents/fast/runs/r1/events"),
                ("GET", "/openapi.json"),
                ("GET", "/docs"),
            ]:
                for headers in ({}, bad, {"Authorization": f"Basic {KEY}"}):
                    response = await client.request(method, url, headers=headers)
                    assert response.status_code == 401, (method, url, headers)
                    assert response.headers["www-authenticate"] == "Bearer"
                    assert "detail" in response.json()
            assert (await client.get("/agents", headers=good)).status_code == 200
            assert (await client.get("/openapi.json", headers=good)).status_code == 200
            run = await client.post(
                "/agents/fast/runs", json={"message": "hi", "stream": False}, headers=good
            )
            assert run.status_code == 200 and run.json()["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({}, "json"),
        ({"message": ""}, "json"),
        ({"message": 3}, "json"),
        ({"message": "hi", "stream": "maybe"}, "json"),
        ({"message": "hi", "run_id": "run*"}, "json"),
        ({"message": "hi", "run_id": "run\x01"}, "json"),
        ({"message": "hi", "run_id": "{tag}"}, "json"),
        (["message"], "json"),
        ({"stream": "true"}, "form"),
        ({"message": "hi", "run_id": "a b"}, "form"),
    ],
)
async def test_bad_run_bodies_are_422(body: object, kind: str) -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            if kind == "json":
                response = await client.post("/agents/fast/runs", json=body)
            else:
                assert isinstance(body, dict)
                response = await client.post("/agents/fast/runs", data=body)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert not stack.control.list_runs()


async def test_malformed_bodies_and_parameters() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            malformed_json = await client.post(
                "/agents/fast/runs",
                content=b'{"message": "hi"',
                headers={"content-type": "application/json"},
            )
            malformed_form = await client.post(
                "/agents/fast/runs",
                content=b"--x\r\nbroken",
                headers={"content-type": "multipart/form-data; boundary=x"},
            )
            not_utf8 = await client.post("/agents/fast/runs", content=b'{"message": "\xff"}')
            wrong_type = await client.post(
                "/agents/fast/runs", content=b"hi", headers={"content-type": "text/plain"}
            )
            bad_path_ids = [
                await client.post("/agents/fast/runs/a*b/cancel"),
                await client.get("/agents/fast/runs/a%0Ab"),
                await client.get("/agents/fast/runs/a[b]/events"),
            ]
            bad_wait = [
                await client.post("/agents/fast/runs/r1/cancel", params={"wait": w})
                for w in ("31", "-1", "soon")
            ]
            bad_last_id = [
                await client.get("/agents/fast/runs/r1/events", headers={"Last-Event-ID": "x"}),
                await client.get("/agents/fast/runs/r1/events", params={"last_event_id": "-2"}),
            ]
    for response in (
        malformed_json,
        malformed_form,
        not_utf8,
        *bad_path_ids,
        *bad_wait,
        *bad_last_id,
    ):
        assert response.status_code == 422, (response.request.url, response.text)
        assert response.headers["content-type"] == "application/json"
    assert wrong_type.status_code == 415


HUGE_EVENT_IDS = [str(2**63), str(2**64), "1" + "0" * 40]


async def test_huge_last_event_ids_are_422_and_the_largest_allowed_one_works() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            done = await client.post("/agents/fast/runs", json={"message": "hi", "stream": False})
            url = f"/agents/fast/runs/{done.json()['run_id']}/events"
            refused = [
                *[await client.get(url, headers={"Last-Event-ID": big}) for big in HUGE_EVENT_IDS],
                *[await client.get(url, params={"last_event_id": big}) for big in HUGE_EVENT_IDS],
            ]
            largest = await client.get(url, headers={"Last-Event-ID": str(2**63 - 1)})
    for response in refused:
        assert response.status_code == 422, (response.request.url, response.text)
        assert response.headers["content-type"] == "application/json"
        assert "9223372036854775807" in response.text
    assert largest.status_code == 200 and largest.text == ""


def _multipart(fields: dict[str, bytes]) -> tuple[bytes, str]:
    parts = [
        b'--b\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (k.encode(), v)
        for k, v in fields.items()
    ]
    return b"".join(parts) + b"--b--\r\n", "multipart/form-data; boundary=b"


_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"


@pytest.mark.parametrize(
    ("content", "content_type", "field"),
    [
        (b'{"message": "x", "session_id": "\\ud800"}', _JSON, "session_id"),
        (b'{"message": "x", "user_id": "a\\udfffb"}', _JSON, "user_id"),
        (b'{"message": "x\\ud83d", "stream": false}', _JSON, "message"),
        (b'{"message": "x", "session_id": "a\\u0000b"}', _JSON, "session_id"),
        (b'{"message": "x", "user_id": "a\\nb"}', _JSON, "user_id"),
        (b'{"message": "x", "run_id": "\\ud800"}', _JSON, "run_id"),
        (b"message=x&session_id=%ED%A0%80", _FORM, "body"),  # a surrogate, in UTF-8 bytes
        (b"message=x&user_id=%FF", _FORM, "body"),
        (b"message=x&user_id=a%00b", _FORM, "user_id"),
        (b"message=x&session_id=a%1Bb", _FORM, "session_id"),
        (*_multipart({"message": b"x", "session_id": b"\xed\xa0\x80"}), "body"),
        (*_multipart({"message": b"x", "user_id": b"\xff"}), "body"),
        (*_multipart({"message": b"x", "user_id": b"a\x07b"}), "user_id"),
    ],
)
async def test_text_that_is_not_utf8_or_ids_with_control_characters_are_422(
    content: bytes, content_type: str, field: str
) -> None:
    """Refused before the run is stored, streaming (the default) or not, JSON or form."""
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            response = await client.post(
                "/agents/fast/runs",
                content=content,
                headers={"content-type": content_type},
            )
            fine = await client.post(
                "/agents/fast/runs",
                json={
                    "message": "é\n\tü",
                    "session_id": "sé ssion",
                    "user_id": "ü-1",
                    "stream": False,
                },
            )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]
    assert fine.status_code == 200 and fine.json()["status"] == "COMPLETED"
    assert fine.json()["session_id"] == "sé ssion"
    assert [r.session_id for r in stack.control.list_runs()] == ["sé ssion"]


async def test_unknown_agent_and_taken_run_id() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            unknown = await client.post("/agents/nobody/runs", json={"message": "hi"})
            body = {"message": "hi", "stream": False, "run_id": "taken"}
            first = await client.post("/agents/fast/runs", json=body)
            second = await client.post("/agents/fast/runs", json=body)
    assert unknown.status_code == 404 and "nobody" in unknown.json()["detail"]
    assert first.status_code == 200
    assert second.status_code == 409 and "taken" in second.json()["detail"]


async def test_oversized_bodies_are_413() -> None:
    big = b"x" * ((1 << 20) + 1)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            declared = await client.post("/agents/fast/runs", data={"message": big.decode()})
            streamed = await client.post(
                "/agents/fast/runs", content=chunks(), headers={"content-type": "application/json"}
            )
            fits = await client.post(
                "/agents/fast/runs", json={"message": "x" * 1000, "stream": False}
            )
    assert declared.status_code == 413 and "detail" in declared.json()
    assert streamed.status_code == 413 and "detail" in streamed.json()
    assert fits.status_code == 200
    assert len(stack.control.list_runs()) == 1


async def test_control_plane_down_is_503_and_the_api_recovers() -> None:
    plane = FlakyPlane()
    with serve(make_agents(plane), control=plane) as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            plane.down = True
            failures = [
                await client.post("/agents/fast/runs", json={"message": "hi"}),
                await client.get("/agents/fast/runs/r1"),
                await client.post("/agents/fast/runs/r1/cancel"),
            ]
            health_down = await client.get("/health")
            plane.down = False
            health_up = await client.get("/health")
            run = await client.post("/agents/fast/runs", json={"message": "hi", "stream": False})
    for response in failures:
        assert response.status_code == 503, response.text
        assert "connection refused" in response.json()["detail"]
        assert response.headers["retry-after"] == "1"
    assert health_down.status_code == 503
    assert health_down.json()["control_plane"]["reachable"] is False
    assert health_up.status_code == 200 and health_up.json()["status"] == "ok"
    assert run.status_code == 200 and run.json()["status"] == "COMPLETED"


async def test_unexpected_failures_are_json_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plane = FlakyPlane()
    with serve(make_agents(plane), control=plane) as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            plane.broken = True
            response = await client.get("/agents/fast/runs/r1")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert "Traceback" not in response.text and "boom" not in response.text


def _codes(operation: dict[str, object]) -> set[str]:
    responses = operation["responses"]
    assert isinstance(responses, dict)
    return set(responses)


async def test_openapi_documents_every_route_and_answer() -> None:
    with serve() as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    runs = paths["/agents/{agent_id}/runs"]["post"]
    assert {"200", "202", "401", "404", "409", "413", "415", "422", "503"} <= _codes(runs)
    assert set(runs["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(runs["requestBody"]["content"]) >= {
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    }
    cancel = paths["/agents/{agent_id}/runs/{run_id}/cancel"]["post"]
    assert {"200", "401", "404", "409", "422", "503"} <= _codes(cancel)
    assert "wait" in {p["name"] for p in cancel["parameters"]}
    run = paths["/agents/{agent_id}/runs/{run_id}"]["get"]
    assert {"200", "404", "422", "503"} <= _codes(run)
    events = paths["/agents/{agent_id}/runs/{run_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {"200", "404"} <= _codes(events)
    assert "200" in _codes(paths["/agents"]["get"])
    assert {"200", "503"} <= _codes(paths["/health"]["get"])
    for name in ("RunView", "RunOutput", "RunAccepted", "AgentView", "Health", "ErrorBody"):
        assert name in schema["components"]["schemas"], name
