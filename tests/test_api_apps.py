"""Loading APP paths (``module:attribute``) for ``kern serve`` and ``kern worker``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kern.apps import load_agents
from kern.exceptions import ConfigError

APP = """
from kern.agent import Agent
from kern.models.offline import OfflineModel

one = Agent(name="One", model=OfflineModel("a"))
two = Agent(name="Two", model=OfflineModel("b"))
agents = [one, two]
class registry:
    agents = (two,)
twins = [one, Agent(name="one", model=OfflineModel("c"))]
mixed = [one, "two"]
empty = []
number = 3
"""


@pytest.fixture(autouse=True)
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    package = tmp_path / "deploy_xyz"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "agents_app.py").write_text(APP)
    (package / "broken.py").write_text("import no_such_dependency_xyz\n")
    (package / "raising.py").write_text("raise RuntimeError('bad config')\n")
    monkeypatch.chdir(tmp_path)  # the current directory is importable, as with uvicorn
    monkeypatch.syspath_prepend(str(tmp_path))  # so load_agents finds it there already
    yield
    for name in [m for m in sys.modules if m.startswith("deploy_xyz")]:
        del sys.modules[name]


def test_loads_an_agent_a_list_or_a_dotted_attribute() -> None:
    assert [a.id for a in load_agents("deploy_xyz.agents_app:agents")] == ["one", "two"]
    assert [a.id for a in load_agents("deploy_xyz.agents_app:one")] == ["one"]
    assert [a.id for a in load_agents("deploy_xyz.agents_app:registry.agents")] == ["two"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("deploy_xyz.agents_app", "must be 'module:attribute'"),
        (":agents", "must be 'module:attribute'"),
        ("deploy_xyz.agents_app:", "must be 'module:attribute'"),
        ("deploy_xyz.nope:agents", "cannot import module 'deploy_xyz.nope'"),
        ("deploy_xyz.broken:agents", "No module named 'no_such_dependency_xyz'"),
        ("deploy_xyz.raising:agents", "RuntimeError: bad config"),
        ("deploy_xyz.agents_app:missing", "has no attribute 'missing'"),
        ("deploy_xyz.agents_app:number", "is a int, not an Agent"),
        ("deploy_xyz.agents_app:mixed", "holds a str, not an Agent"),
        ("deploy_xyz.agents_app:empty", "holds no agents"),
        ("deploy_xyz.agents_app:twins", "two agents have the id 'one'"),
    ],
)
def test_bad_paths_say_what_to_fix(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_agents(spec)
    assert message in str(caught.value)
