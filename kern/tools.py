"""Function tools: a Python function becomes a tool the model can call.

The JSON schema comes from the signature (through pydantic) and the docstring
(first paragraph: the description; a Google-style ``Args:`` section: each
parameter's description). A parameter annotated `RunContext` is injected, not
shown to the model. Sync tools run in a thread pool of their own, so a tool
that ignores cancellation cannot starve kern's other threads.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.fields import FieldInfo

from kern.context import RunContext
from kern.exceptions import ConfigError
from kern.models.base import ToolSpec

ToolFunction = Callable[..., Any]

SYNC_TOOL_GRACE = 0.02
"""Seconds a cancelled run waits for a sync tool to return before abandoning it."""

_tool_threads = ThreadPoolExecutor(max_workers=64, thread_name_prefix="kern-tool")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


class Tool:
    """A callable the model may invoke, with its schema."""

    def __init__(self, fn: ToolFunction, *, name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"tool {fn!r} is not callable")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", "tool"))
        self.is_async = inspect.iscoroutinefunction(fn)
        description, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
        self.description = description or self.name
        self._context_param, self._args_model = _args_model(fn, self.name, arg_docs)
        self.spec = ToolSpec(
            name=self.name,
            description=self.description,
            parameters=_clean_schema(self._args_model.model_json_schema()),
        )

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    async def invoke(self, arguments: str, ctx: RunContext) -> str:
        """Run the tool with the model's JSON ``arguments``; return its result as text."""
        try:
            raw = json.loads(arguments or "{}")
            parsed = self._args_model.model_validate(raw)
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"bad arguments for tool {self.name}: {exc}") from exc
        kwargs = {k: getattr(parsed, k) for k in type(parsed).model_fields}
        if self._context_param:
            kwargs[self._context_param] = ctx
        if self.is_async:
            result = await self.fn(**kwargs)
        else:
            result = await _run_sync(partial(self.fn, **kwargs))
        return _to_text(result)


def as_tools(items: Iterable[ToolFunction | Tool]) -> tuple[Tool, ...]:
    tools = tuple(t if isinstance(t, Tool) else Tool(t) for t in items)
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise ConfigError(f"tool names must be unique, got {names}")
    return tools


async def _run_sync(call: Callable[[], Any]) -> Any:
    loop = asyncio.get_running_loop()
    future: Awaitable[Any] = loop.run_in_executor(_tool_threads, call)
    fut = asyncio.ensure_future(future)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        # Give a tool that polls RunContext a moment to return, then abandon it:
        # the run ends now, the thread finishes on its own.
        await asyncio.wait([fut], timeout=SYNC_TOOL_GRACE)
        if fut.done() and not fut.cancelled():
            fut.exception()  # retrieved, so asyncio does not log it
        raise


def _to_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    try:
        return json.dumps(result, default=str)
    except (TypeError, ValueError):
        return str(result)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    paragraphs = doc.split("\n\n")
    description = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0] else ""
    if description.lower().startswith(("args:", "arguments:", "parameters:")):
        description = ""
    args: dict[str, str] = {}
    in_args = False
    current: str | None = None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if not in_args:
            continue
        if stripped.endswith(":") and not line.startswith((" ", "\t")):
            break  # the next section (Returns:, Raises:)
        match = _ARG_LINE.match(line)
        if match and (line.startswith((" ", "\t"))):
            indent = len(line) - len(line.lstrip())
            if current is None or indent <= _indent_of(doc, current):
                current = match.group(1).lstrip("*")
                args[current] = match.group(2).strip()
                continue
        if current and stripped:
            args[current] = f"{args[current]} {stripped}".strip()
    return description, args


def _indent_of(doc: str, name: str) -> int:
    for line in doc.splitlines():
        if line.strip().startswith(name):
            return len(line) - len(line.lstrip())
    return 0


def _args_model(
    fn: ToolFunction, name: str, arg_docs: dict[str, str]
) -> tuple[str | None, type[BaseModel]]:
    signature = inspect.signature(fn)
    try:
        hints = get_type_hints(fn, localns={"RunContext": RunContext})
    except Exception as exc:  # an unresolvable annotation: say which tool
        raise ConfigError(f"cannot read the type hints of tool {name}: {exc}") from exc
    context_param: str | None = None
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"tool {name}: *args/**kwargs cannot be described to a model")
        annotation = hints.get(param.name, Any)
        if annotation is RunContext:
            context_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (
            annotation,
            FieldInfo(default=default, description=arg_docs.get(param.name)),
        )
    model = create_model(f"{name}_args", __config__=ConfigDict(extra="ignore"), **fields)
    return context_param, model


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    schema.setdefault("properties", {})
    schema.setdefault("required", [])
    return schema
