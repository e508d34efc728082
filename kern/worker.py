"""`kern worker`: execute queued runs of some agents, many at a time.

A worker reads its agents' queues (`kern.queue.RunQueue`), runs each entry as
an asyncio task (at most ``concurrency`` at once), appends every event to the
run's log so any process can follow it, and acknowledges the entry when the
run ends. SIGTERM (or SIGINT) stops it gracefully: no new runs, in-flight
runs get ``shutdown_grace`` seconds to finish, the rest are cancelled with
reason ``shutdown`` and keep their partial content.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

import redis

from kern.agent import Agent
from kern.control import default_control_plane, keys
from kern.control.base import ControlPlane
from kern.exceptions import ConfigError, KernError, RunNotStarted
from kern.queue import CLAIM_IDLE_MS, Entry, RunQueue
from kern.run.base import RunStatus
from kern.runner import RunRequest, execute_run

log = logging.getLogger("kern.worker")

REASON_SHUTDOWN = "shutdown"
CLAIM_EVERY = 5.0
"""Seconds between looks for entries a dead worker left unacknowledged."""
READ_BLOCK_MS = 500


class Worker:
    """Serves the runs of ``agents`` from the Redis run queue."""

    def __init__(
        self,
        agents: Sequence[Agent],
        *,
        control: ControlPlane | None = None,
        concurrency: int = 256,
        shutdown_grace: float = 30.0,
        claim_after: float = CLAIM_IDLE_MS / 1000,
    ) -> None:
        from kern.control.redis import RedisControlPlane

        plane = control or default_control_plane()
        if not isinstance(plane, RedisControlPlane):
            raise ConfigError("kern worker needs the Redis control plane: set KERN_REDIS_URL")
        if not agents:
            raise ConfigError("a worker needs at least one agent")
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        self.control = plane
        self.agents = {agent.id: agent.attach(plane) for agent in agents}
        self.queue = RunQueue(plane)
        self.concurrency = concurrency
        self.shutdown_grace = shutdown_grace
        self.claim_idle_ms = int(claim_after * 1000)
        self.consumer = plane.owner_id
        self._tasks: dict[asyncio.Task[None], Entry] = {}
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop taking runs; in-flight runs get the grace period."""
        self._stopping.set()

    async def serve(self) -> None:
        """Run until `stop` (or SIGTERM / SIGINT), then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        await asyncio.to_thread(self._announce)
        log.info(
            "worker %s serving %s (concurrency %d)",
            self.consumer,
            ", ".join(self.agents),
            self.concurrency,
        )
        next_claim = 0.0
        backoff = 0.1
        while not self._stopping.is_set():
            if len(self._tasks) >= self.concurrency:
                await asyncio.wait(list(self._tasks), return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + CLAIM_EVERY
                    for entry in await asyncio.to_thread(self._claim):
                        self._spawn(entry)
                entries = await asyncio.to_thread(
                    self.queue.read,
                    list(self.agents),
                    self.consumer,
                    self.concurrency - len(self._tasks),
                    READ_BLOCK_MS,
                )
            except (redis.RedisError, KernError) as exc:
                # Redis is away: runs in flight go on; taking new ones waits for it.
                log.warning("cannot read the run queue (%s); retrying in %.1fs", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for entry in entries:
                self._spawn(entry)
        await self._shutdown()

    def _announce(self) -> None:
        served: dict[Any, Any] = {
            agent_id: json.dumps({"name": agent.name, "model": agent.model.id, "at": time.time()})
            for agent_id, agent in self.agents.items()
        }
        self.control.redis.hset(keys.agents(self.control.prefix), mapping=served)
        self.queue.ensure_groups(list(self.agents))

    def _claim(self) -> list[Entry]:
        return self.queue.claim(list(self.agents), self.consumer, self.claim_idle_ms)

    def _spawn(self, entry: Entry) -> None:
        task = asyncio.ensure_future(self._execute(entry))
        self._tasks[task] = entry
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        entry = self._tasks.pop(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The entry stays unacknowledged: the claim path closes it later.
            log.error("run %s: %s: %s", entry.run_id, type(exc).__name__, exc)

    async def _execute(self, entry: Entry) -> None:
        agent = self.agents[entry.agent_id]
        record = await self.control.aget(entry.run_id)
        if record is None or record.status != RunStatus.pending:
            # Unknown, cancelled while queued, or claimed after it had started
            # elsewhere: never (re)run it. A live owner still holds a started run.
            if record is None or record.is_terminal:
                await asyncio.to_thread(self.queue.done, entry)
            log.info("run %s not started: %s", entry.run_id, record.status if record else "gone")
            return
        request = RunRequest(
            run_id=record.run_id,
            input=record.input,
            session_id=record.session_id,
            user_id=record.user_id,
        )
        started = time.monotonic()
        log.info("run %s started (agent %s)", entry.run_id, agent.id)
        try:
            final = await execute_run(agent, request, _ignore, create=False, record_events=True)
        except RunNotStarted:  # another worker took it first: the entry is theirs to close
            log.info("run %s is running elsewhere: left alone", entry.run_id)
            return
        log.info(
            "run %s ended %s in %.2fs", entry.run_id, final.status.value, time.monotonic() - started
        )
        await asyncio.to_thread(self.queue.done, entry)

    async def _shutdown(self) -> None:
        if self._tasks:
            log.info(
                "shutting down: %d runs in flight, grace %.1fs",
                len(self._tasks),
                self.shutdown_grace,
            )
            await asyncio.wait(list(self._tasks), timeout=self.shutdown_grace)
        for entry in list(self._tasks.values()):
            await self.control.acancel(entry.run_id, reason=REASON_SHUTDOWN)
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        log.info("worker %s stopped", self.consumer)


def _ignore(_: object) -> None:
    """Workers publish events through the run's log only."""
