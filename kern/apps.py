"""Loading the agents a process serves from an ``APP`` path, ``module:attribute``.

``kern serve APP`` and ``kern worker APP`` both name their agents this way:
``workers.story:agents`` imports ``workers.story`` and reads ``agents``, an
`Agent` or a list (or tuple) of them. The attribute may be dotted
(``pkg.mod:registry.agents``). The current directory is importable, as with
``uvicorn``. Every failure is a `ConfigError` that says what to fix.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable

from kern.agent import Agent
from kern.exceptions import ConfigError

ENV_APP = "KERN_APP"
"""Where ``kern serve --workers N`` passes the APP path to its worker processes."""


def load_agents(spec: str) -> list[Agent]:
    """The agents named by ``spec`` (``module:attribute``), with unique ids."""
    module_name, attribute = _split(spec)
    module = _import(module_name)
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"{spec!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return _as_agents(spec, target)


def _split(spec: str) -> tuple[str, str]:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name.strip() or not attribute.strip():
        raise ConfigError(
            f"APP must be 'module:attribute' (e.g. 'workers.story:agents'), got {spec!r}"
        )
    return module_name.strip(), attribute.strip()


def _import(module_name: str) -> object:
    cwd = os.getcwd()
    if cwd not in sys.path:  # like uvicorn: the app may live in the current directory
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"cannot import module {module_name!r}: not found") from None
        raise ConfigError(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc


def _as_agents(spec: str, target: object) -> list[Agent]:
    if isinstance(target, Agent):
        return [target]
    if isinstance(target, str | bytes) or not isinstance(target, Iterable):
        raise ConfigError(
            f"{spec!r} is a {type(target).__name__}, not an Agent or a list of Agents"
        )
    agents = list(target)
    if not agents:
        raise ConfigError(f"{spec!r} holds no agents")
    for item in agents:
        if not isinstance(item, Agent):
            raise ConfigError(f"{spec!r} holds a {type(item).__name__}, not an Agent")
    seen: set[str] = set()
    for agent in agents:
        if agent.id in seen:
            raise ConfigError(f"{spec!r}: two agents have the id {agent.id!r}")
        seen.add(agent.id)
    return agents


__all__ = ["ENV_APP", "load_agents"]
