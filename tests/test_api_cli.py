"""``kern run`` and ``kern serve`` as users run them: real processes, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import SHORT_TEXT, make_agents, serve
from typer.testing import CliRunner

from kern.api.settings import ApiSettings
from kern.cli import app as cli
from kern.control.base import RunRecord
from kern.control.memory import MemoryControlPlane
from kern.run.base import RunStatus
from kern.testing.redis_server import free_port

TESTS = Path(__file__).parent
KERN = [sys.executable, "-c", "from kern.cli import main; main()"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERN_")}
    env.update(extra)
    return env


def test_kern_run_streams_a_run_to_the_end() -> None:
    with serve() as stack:
        done = subprocess.run(
            [*KERN, "run", "fast", "hello", "--url", stack.url],
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(),
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("run id: ")
    run_id = lines[0].removeprefix("run id: ")
    assert SHORT_TEXT in done.stdout
    assert lines[-1] == "status: COMPLETED"
    record = stack.control.get(run_id)
    assert record is not None and record.status == RunStatus.completed


def test_ctrl_c_cancels_the_run_on_the_server() -> None:
    with serve() as stack:
        process = subprocess.Popen(
            [*KERN, "run", "slow", "tell me a story", "--url", stack.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        try:
            deadline = time.monotonic() + 20
            while not (runs := stack.control.list_runs(agent_id="slow")) or not runs[0].started_at:
                assert time.monotonic() < deadline, "the run never started"
                time.sleep(0.05)
            time.sleep(0.3)  # let some text arrive
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        record = stack.control.get(runs[0].run_id)
    assert process.returncode == 130, err
    assert out.startswith(f"run id: {runs[0].run_id}\n")
    assert record is not None and record.status == RunStatus.cancelled
    assert record.content and record.stopped
    assert "status: CANCELLED" in out
    assert f"partial content ({len(record.content)} characters):\n{record.content}" in out


class SlowToStorePlane(MemoryControlPlane):
    """Stores each new run only ``delay`` s after the request for it came in."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.creating = threading.Event()

    async def acreate(self, record: RunRecord) -> None:
        self.creating.set()
        await asyncio.sleep(self.delay)
        await super().acreate(record)


def test_ctrl_c_before_the_server_stored_the_run_still_cancels_it() -> None:
    plane = SlowToStorePlane(delay=0.8)
    with serve(make_agents(plane), control=plane) as stack:
        process = subprocess.Popen(
            [*KERN, "run", "slow", "tell me a story", "--url", stack.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        try:
            assert plane.creating.wait(20), "the run was never asked for"
            assert not stack.control.list_runs()
            process.send_signal(signal.SIGINT)  # the first cancel finds no run: 404
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        run_id = out.splitlines()[0].removeprefix("run id: ")
        record = stack.control.get(run_id)
    assert process.returncode == 130, err
    assert record is not None and record.status == RunStatus.cancelled, record
    assert "status: CANCELLED" in out


def test_kern_run_reports_usage_and_connection_errors() -> None:
    with serve(settings=ApiSettings(security_key="k")) as stack:
        unknown = subprocess.run(
            [*KERN, "run", "nobody", "hi", "--url", stack.url],
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(KERN_SECURITY_KEY="k"),
        )
        no_key = subprocess.run(
            [*KERN, "run", "fast", "hi", "--url", stack.url],
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(),
        )
        with_key = subprocess.run(
            [*KERN, "run", "fast", "hi", "--url", stack.url],
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(KERN_SECURITY_KEY="k"),
        )
    refused = subprocess.run(
        [*KERN, "run", "fast", "hi", "--url", stack.url],  # the server is gone
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
    )
    assert unknown.returncode == 2 and "HTTP 404" in unknown.stderr
    assert no_key.returncode == 2 and "HTTP 401" in no_key.stderr
    assert with_key.returncode == 0, with_key.stderr
    assert refused.returncode == 2 and "ConnectError" in refused.stderr


@pytest.fixture
def served() -> Iterator[str]:
    """``kern serve api_support:SERVED`` in a subprocess; yields its URL."""
    with httpx.Client() as probe:
        port = free_port()
        process = subprocess.Popen(
            [*KERN, "serve", "api_support:SERVED", "--port", str(port), "--log-level", "warning"],
            cwd=TESTS,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(probe, url, process)
            yield url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
            assert process.returncode == 0


def test_kern_serve_serves_the_app(served: str) -> None:
    with httpx.Client(base_url=served, timeout=10) as client:
        agents = client.get("/agents").json()
        run = client.post("/agents/fast/runs", data={"message": "hi", "stream": "false"})
    assert [a["id"] for a in agents] == ["slow", "fast"]
    assert run.json()["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "no_colon"], "must be 'module:attribute'"),
        (["serve", "no_such_module_xyz:agents"], "cannot import module"),
        (["serve", "api_support:nothing"], "has no attribute"),
        (["serve", "api_support:SHORT_TEXT"], "not an Agent"),
        (["serve", "api_support:SERVED", "--workers", "2"], "KERN_REDIS_URL"),
        (["serve", "api_support:SERVED", "--dispatch", "queue"], "queue"),
    ],
)
def test_kern_serve_refuses_bad_setups(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KERN_REDIS_URL", raising=False)
    monkeypatch.chdir(TESTS)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def _wait_healthy(client: httpx.Client, url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"kern serve exited: {process.communicate()}")
        try:
            if client.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("kern serve did not become healthy")
