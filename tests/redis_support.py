"""Helpers for tests that need Redis: private servers, unique prefixes, key cleanup."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from kern.control import keys

ROOT = Path(__file__).resolve().parent.parent
PROCS = Path(__file__).resolve().parent / "procs"
KERN = Path(sys.executable).with_name("kern")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique_prefix() -> str:
    return f"kt-{uuid.uuid4().hex[:12]}"


def answers(url: str, timeout: float = 0.5) -> bool:
    """True if a Redis at ``url`` answers PING."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=None
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix``; returns how many went."""
    client = redis.Redis.from_url(url)
    try:
        names = list(client.scan_iter(match=keys.pattern(prefix), count=1000))
        for start in range(0, len(names), 500):
            client.unlink(*names[start : start + 500])
        return len(names)
    finally:
        client.close()


class RedisServer:
    """A private ``redis-server`` on a free loopback port, without persistence.

    ``restart()`` stops it (losing every key, as a real restart without
    persistence does) and starts it again on the same port.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="kern-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> RedisServer:
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not answers(self.url, timeout=0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)


def kern_env(url: str, prefix: str) -> dict[str, str]:
    """The environment for a kern subprocess that uses Redis at ``url`` under ``prefix``."""
    env = dict(os.environ)
    env.update(
        KERN_REDIS_URL=url,
        KERN_REDIS_PREFIX=prefix,
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    return env


def kern_cli(
    args: list[str], url: str | None, prefix: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the ``kern`` command in a new process."""
    env = kern_env(url or "", prefix)
    if url is None:
        env.pop("KERN_REDIS_URL")
    return subprocess.run(
        [sys.executable, "-m", "kern.cli", *args] if not KERN.exists() else [str(KERN), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_proc(script: str, args: list[str], url: str, prefix: str) -> subprocess.Popen[str]:
    """Start ``tests/procs/<script>`` with the Redis settings; lines on stdout."""
    return subprocess.Popen(
        [sys.executable, str(PROCS / script), *args],
        env=kern_env(url, prefix),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until it is truthy or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
