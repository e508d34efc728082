"""Handing accepted runs to whatever executes them.

One small protocol, `Dispatcher`: store the run as PENDING (so a taken run id
fails before any answer is sent) and arrange for it to execute.

- `InlineDispatcher` executes runs inside the API process, as asyncio tasks,
  with their events recorded in the control plane's log (any process can
  follow or replay them) and published to a local `RunFeed` (fast fan-out).
- `QueueDispatcher` hands runs to ``kern worker`` processes through the Redis
  run queue; the routes follow them through the control plane's event log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from kern.api.feeds import FeedHub, RunFeed
from kern.api.settings import DispatchKind
from kern.control.base import ControlPlane
from kern.exceptions import ConfigError
from kern.runner import RunRequest, execute_run

if TYPE_CHECKING:
    from kern.agent import Agent

log = logging.getLogger("kern.api")

REASON_SERVER_SHUTDOWN = "server_shutdown"


class Dispatcher(Protocol):
    """Starts runs accepted by the API."""

    kind: DispatchKind

    async def submit(self, agent: Agent, request: RunRequest) -> None:
        """Store the run PENDING and have it executed.

        Raises `RunIdInUse`, `InvalidRunId` or `ControlPlaneUnavailable` before
        anything started.
        """
        ...

    async def aclose(self) -> None:
        """Stop: runs still executing here are cancelled and awaited."""
        ...


class InlineDispatcher:
    """Executes runs as tasks of this process's event loop."""

    kind: DispatchKind = "inline"

    def __init__(self, hub: FeedHub, *, shutdown_grace: float = 5.0) -> None:
        self.hub = hub
        self.shutdown_grace = shutdown_grace
        self._runs: dict[str, tuple[Agent, asyncio.Task[None]]] = {}

    def __len__(self) -> int:
        return len(self._runs)

    async def submit(self, agent: Agent, request: RunRequest) -> None:
        await agent.control.acreate(request.record(agent.id))
        feed = self.hub.open(request.run_id)
        task = asyncio.create_task(self._execute(agent, request, feed), name=request.run_id)
        self._runs[request.run_id] = (agent, task)

    async def _execute(self, agent: Agent, request: RunRequest, feed: RunFeed) -> None:
        try:
            await execute_run(agent, request, feed.publish, create=False, record_events=True)
        except asyncio.CancelledError:
            pass  # the server is stopping: the run ended CANCELLED, its end is stored
        except Exception:  # the run's terminal event went out; its log may be short
            log.exception("run %s: could not record its end", request.run_id)
        finally:
            feed.close()
            self.hub.discard(feed)  # its events are in the log now
            self._runs.pop(request.run_id, None)

    async def aclose(self) -> None:
        runs = dict(self._runs)
        if not runs:
            return
        # Cancelled through the control plane, so each run stores why it ended.
        await asyncio.gather(
            *(
                agent.control.acancel(run_id, reason=REASON_SERVER_SHUTDOWN)
                for run_id, (agent, _) in runs.items()
            ),
            return_exceptions=True,
        )
        tasks = [task for _, task in runs.values()]
        _, late = await asyncio.wait(tasks, timeout=self.shutdown_grace or None)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)


class QueueDispatcher:
    """Enqueues runs for `kern worker` processes (needs the Redis control plane)."""

    kind: DispatchKind = "queue"

    def __init__(self, control: ControlPlane) -> None:
        from kern.control.redis import RedisControlPlane
        from kern.queue import RunQueue

        if not isinstance(control, RedisControlPlane):
            raise ConfigError(
                "--dispatch queue hands runs to `kern worker`s through Redis: set KERN_REDIS_URL"
            )
        self.queue = RunQueue(control)

    async def submit(self, agent: Agent, request: RunRequest) -> None:
        await asyncio.to_thread(self.queue.submit, request.record(agent.id))

    async def aclose(self) -> None:
        """Queued and running runs belong to the workers: nothing to stop here."""


def make_dispatcher(
    kind: DispatchKind, hub: FeedHub, control: ControlPlane, *, shutdown_grace: float
) -> Dispatcher:
    """The dispatcher for ``kind``."""
    if kind == "inline":
        return InlineDispatcher(hub, shutdown_grace=shutdown_grace)
    if kind == "queue":
        return QueueDispatcher(control)
    raise ConfigError(f"unknown dispatch {kind!r}: use 'inline' or 'queue'")
