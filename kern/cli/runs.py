"""``kern cancel``, ``kern status`` and ``kern runs``: runs in Redis, from any shell.

They talk to the control plane named by ``KERN_REDIS_URL`` (key prefix from
``KERN_REDIS_PREFIX``, default ``kern``). Exit codes:

    0  done (cancel: this call cancelled the run, or it was CANCELLED already:
       a repeated cancel succeeds, like the HTTP API's 200 on a repeat)
    1  unknown run, or (cancel) the run had already ended COMPLETED or ERROR:
       its status is left unchanged
    2  usage error, KERN_REDIS_URL unset, or Redis unreachable
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import typer
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from rich.console import Console
from rich.table import Table

from kern.control import ENV_REDIS_URL
from kern.control.base import RunRecord
from kern.control.redis import RedisControlPlane
from kern.exceptions import ControlPlaneUnavailable
from kern.run.base import RunStatus

EXIT_OK, EXIT_NOT_DONE, EXIT_USAGE = 0, 1, 2

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@contextlib.contextmanager
def _control() -> Iterator[RedisControlPlane]:
    """The Redis control plane from the environment; exit 2 if there is none."""
    url = os.environ.get(ENV_REDIS_URL)
    if not url:
        _fail(
            f"{ENV_REDIS_URL} is not set: point it at the Redis your workers use, "
            "e.g. redis://localhost:6379/0"
        )
    try:
        # Few retries: a person is waiting, and exit 2 says what is wrong.
        plane = RedisControlPlane.from_url(
            url, retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries=2)
        )
    except ValueError as exc:
        _fail(f"bad {ENV_REDIS_URL} {url!r}: {exc}")
    try:
        yield plane
    except ControlPlaneUnavailable as exc:
        _fail(str(exc))
    finally:
        plane.close()


def _fail(message: str) -> NoReturn:
    typer.echo(f"kern: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _dump(record: RunRecord | None) -> dict[str, Any] | None:
    return None if record is None else record.model_dump(mode="json")


def cancel(
    run_id: Annotated[str, typer.Argument(help="The run to cancel.")],
    wait: Annotated[
        float,
        typer.Option(help="Wait up to this many seconds for the owner to stop the run.", min=0),
    ] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Cancel a run from this shell; its owner (any process or host) stops it."""
    with _control() as plane:
        result = plane.cancel(run_id)
        record = result.record
        done = record is not None and record.status == RunStatus.cancelled
        if done and wait > 0:
            record = plane.wait_stopped(run_id, wait, poll=0.02)
    stopped = record is not None and record.stopped
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "run_id": run_id,
                    "cancelled": result.won,
                    "already_cancelled": done and not result.won,
                    "found": result.found,
                    "status": record.status.value if record else None,
                    "stopped": stopped,
                    "run": _dump(record),
                }
            )
        )
    else:
        _say_cancel(run_id, result.won, record, wait)
    raise typer.Exit(EXIT_OK if done else EXIT_NOT_DONE)


def _say_cancel(run_id: str, won: bool, record: RunRecord | None, wait: float) -> None:
    if record is None:
        typer.echo(f"kern: no run {run_id} (unknown or expired)", err=True)
        return
    if record.status != RunStatus.cancelled:
        typer.echo(f"kern: run {run_id} already ended {record.status.value}; not changed", err=True)
        return
    typer.echo(
        f"{'Cancelled' if won else 'Already cancelled:'} run {run_id} (agent {record.agent_id})."
    )
    if record.stopped:
        typer.echo(f"Stopped; {len(record.content)} characters of content kept.")
    elif wait > 0:
        typer.echo(f"The owner has not stopped the run within {wait:g} s.")


def status(
    run_id: Annotated[str, typer.Argument(help="The run.")], as_json: JsonOption = False
) -> None:
    """Show one run: status, owner, timestamps, content so far."""
    with _control() as plane:
        record = plane.get(run_id)
    if as_json:
        typer.echo(json.dumps(_dump(record)))
    elif record is None:
        typer.echo(f"kern: no run {run_id} (unknown or expired)", err=True)
    else:
        _show(record)
    raise typer.Exit(EXIT_OK if record is not None else EXIT_NOT_DONE)


def _show(record: RunRecord) -> None:
    rows = [
        ("run id", record.run_id),
        ("agent", record.agent_id),
        ("status", record.status.value),
        ("owner", record.owner or "-"),
        ("created", _when(record.created_at)),
        ("started", _when(record.started_at)),
        ("ended", _when(record.ended_at)),
        ("stopped", "yes" if record.stopped else "no"),
    ]
    if record.cancel_reason:
        rows.append(("reason", record.cancel_reason))
    if record.error:
        rows.append(("error", record.error))
    preview = record.content[:200] + ("..." if len(record.content) > 200 else "")
    rows.append(("content", f"{len(record.content)} chars: {preview!r}" if record.content else "-"))
    for name, value in rows:
        typer.echo(f"{name + ':':<9} {value}")


def runs(
    status: Annotated[
        str | None, typer.Option(help="Only runs with this status (PENDING, RUNNING, ...).")
    ] = None,
    agent: Annotated[str | None, typer.Option(help="Only runs of this agent.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs.", min=1)] = 50,
    as_json: JsonOption = False,
) -> None:
    """List runs, newest first."""
    wanted = _parse_status(status)
    with _control() as plane:
        found = plane.list_runs(status=wanted, agent_id=agent, limit=limit)
    if as_json:
        typer.echo(json.dumps([_dump(r) for r in found]))
        return
    table = Table("run id", "agent", "status", "owner", "age")
    now = time.time()
    for record in found:
        table.add_row(
            record.run_id,
            record.agent_id,
            record.status.value,
            record.owner or "-",
            _age(now - record.created_at),
        )
    Console(width=max(100, Console().width)).print(table)


def _parse_status(value: str | None) -> RunStatus | None:
    if value is None:
        return None
    try:
        return RunStatus(value.upper())
    except ValueError:
        choices = ", ".join(s.value for s in RunStatus)
        typer.echo(f"kern: unknown status {value!r}; use one of {choices}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
