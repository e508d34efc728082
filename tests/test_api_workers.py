"""``kern serve --workers 2`` on Redis: a cancel reaching one process stops a run in the other."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from api_support import SeqMessage, check_contract
from test_api_cli import KERN, TESTS, _env, _wait_healthy

from kern.api.sse import iter_sse
from kern.run.agent import RunCancelledEvent, RunContentEvent, event_from_json
from kern.testing.redis_server import free_port

pytestmark = pytest.mark.redis


@pytest.fixture
def two_workers(redis_url: str, redis_prefix: str) -> Iterator[str]:
    port = free_port()
    env = _env(KERN_REDIS_URL=redis_url, KERN_REDIS_PREFIX=redis_prefix)
    process = subprocess.Popen(
        [
            *KERN,
            "serve",
            "api_support:SERVED",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        cwd=TESTS,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client() as probe:
            _wait_healthy(probe, url, process)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@contextlib.contextmanager
def _client_on_another_process(url: str, owner: str) -> Iterator[httpx.Client]:
    """A client whose (kept-alive) connection is served by a process other than ``owner``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with httpx.Client(base_url=url, timeout=10) as client:
            if client.get("/health").json()["owner"] != owner:
                yield client
                return
    raise AssertionError("every connection went to the same process")


def _events(response: httpx.Response) -> Iterator[SeqMessage]:
    for message in iter_sse(response.iter_lines()):
        assert message.id is not None
        yield SeqMessage(int(message.id), event_from_json(message.data))


def test_cancel_and_follow_across_api_processes(two_workers: str) -> None:
    with httpx.Client(base_url=two_workers, timeout=10) as streamer:
        owner = streamer.get("/health").json()["owner"]
        streamed: list[SeqMessage] = []
        with streamer.stream("POST", "/agents/slow/runs", json={"message": "go"}) as response:
            run_id = response.headers["x-run-id"]
            events = _events(response)
            streamed.extend(next(events) for _ in range(10))
            with _client_on_another_process(two_workers, owner) as other:
                assert other.get(f"/agents/slow/runs/{run_id}").json()["owner"] == owner
                followed: list[SeqMessage] = []
                headers = {"Last-Event-ID": "4"}
                with other.stream(
                    "GET", f"/agents/slow/runs/{run_id}/events", headers=headers
                ) as follow:
                    for message in _events(follow):  # read from the log, written elsewhere
                        followed.append(message)
                        if len(followed) == 10:
                            sent = time.monotonic()
                            cancel = other.post(f"/agents/slow/runs/{run_id}/cancel")
                            assert cancel.status_code == 200
                streamed.extend(events)
                latency = time.monotonic() - sent
                stored = other.get(f"/agents/slow/runs/{run_id}").json()
    check_contract(streamed)
    check_contract(followed, first_id=5)
    final = streamed[-1].event
    assert isinstance(final, RunCancelledEvent)
    assert followed[-1].event == final
    content = "".join(m.event.content for m in streamed if isinstance(m.event, RunContentEvent))
    assert final.content == content
    assert stored["status"] == "CANCELLED" and stored["content"] == content
    assert latency < 2.0
