"""The deployment files: docker-compose.yml and the Dockerfile (no Docker engine runs here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kern.agent import Agent
from kern.apps import load_agents
from kern.cli import app as cli
from kern.models.offline import OfflineModel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command if isinstance(command, list) else command.split()


def test_compose_has_redis_api_and_scaled_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    assert services["redis"]["image"].startswith("redis:")
    api, worker = services["api"], services["worker"]
    assert "7777:7777" in api["ports"]
    assert worker["deploy"]["replicas"] >= 2
    for service in (api, worker):
        assert service["environment"]["KERN_REDIS_URL"].startswith("redis://redis:6379")
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["stop_signal"] == "SIGTERM"


def test_compose_commands_are_valid_kern_commands(compose: dict[str, Any]) -> None:
    api = command_of(compose["services"]["api"])
    worker = command_of(compose["services"]["worker"])
    assert api[:2] == ["kern", "serve"] and worker[:2] == ["kern", "worker"]
    assert api[api.index("--dispatch") + 1] == "queue"
    assert api[api.index("--port") + 1] == "7777"
    for command in (api, worker):
        sub = cli.registered_commands
        assert command[1] in {c.callback.__name__ for c in sub if c.callback}
        agents = load_agents(command[2])
        assert agents and all(isinstance(a, Agent) for a in agents)


def test_the_worker_app_runs_offline_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    import importlib

    import workers.storyteller as storyteller

    module = importlib.reload(storyteller)
    assert [a.id for a in module.agents] == ["story-writer-agent"]
    assert isinstance(module.story_writer.model, OfflineModel)


def test_dockerfile_installs_kern_and_the_workers() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    for needed in ("COPY kern ./kern", "COPY workers ./workers", "pip install", "EXPOSE 7777"):
        assert needed in text
