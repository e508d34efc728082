"""Shared fixtures: a real Redis for the whole session, private servers, unique prefixes.

The session Redis is ``KERN_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/0).
If it does not answer, a ``redis-server`` on a free port is started for the
session when one is on PATH; otherwise Redis tests are skipped, with the
reason shown, unless ``KERN_REQUIRE_REDIS=1`` (CI), which makes them fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from redis_support import delete_prefix, unique_prefix

from kern.testing.redis_server import RedisServer, answers

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"


def _no_redis(reason: str) -> None:
    if os.environ.get("KERN_REQUIRE_REDIS") == "1":
        pytest.fail(f"KERN_REQUIRE_REDIS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a real Redis for this test session."""
    url = os.environ.get("KERN_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    if answers(url):
        yield url
        return
    if not RedisServer.available():
        _no_redis(f"no Redis answers at {url} and redis-server is not on PATH")
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; its keys are deleted afterwards."""
    prefix = unique_prefix()
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (restart it, kill its clients, count its commands)."""
    if not RedisServer.available():
        _no_redis("redis-server is not on PATH (needed for a private server)")
    with RedisServer() as server:
        yield server
