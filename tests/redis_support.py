"""Helpers for tests that need Redis: private servers, unique prefixes, key cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from kern.control import keys

ROOT = Path(__file__).resolve().parent.parent
PROCS = Path(__file__).resolve().parent / "procs"
KERN = Path(sys.executable).with_name("kern")


def unique_prefix() -> str:
    return f"kt-{uuid.uuid4().hex[:12]}"


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
