"""Submit runs to workers and follow them from any process (Redis control plane).

    client = RunClient.from_url("redis://127.0.0.1:6379/0")
    run_id = client.submit("story-writer", "Write a story")
    for event in client.events(run_id):
        ...
    client.cancel(run_id)

The events are the same objects a local run yields.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from kern import runtime
from kern.control import keys
from kern.control.base import RunRecord
from kern.exceptions import UnknownAgent
from kern.follow import follow_log
from kern.ids import new_run_id, validate_run_id
from kern.queue import RunQueue
from kern.run.agent import RunOutputEvent

if TYPE_CHECKING:
    from kern.control.redis import RedisControlPlane


class RunClient:
    """A handle on a deployment's queue and runs, from outside its workers."""

    def __init__(self, control: RedisControlPlane) -> None:
        self.control = control
        self.queue = RunQueue(control)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "kern") -> RunClient:
        from kern.control.redis import RedisControlPlane

        return cls(RedisControlPlane.from_url(url, prefix=prefix))

    def agents(self) -> list[str]:
        """Ids of the agents some worker has announced."""
        raw = self.control.redis.hkeys(keys.agents(self.control.prefix))
        return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in raw)

    def submit(
        self,
        agent_id: str,
        message: str,
        *,
        run_id: str | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> str:
        """Queue a run; returns its id. Raises `UnknownAgent` if no worker serves it."""
        if not self.control.redis.hexists(keys.agents(self.control.prefix), agent_id):
            raise UnknownAgent(f"no worker serves agent {agent_id!r}")
        record = RunRecord(
            run_id=validate_run_id(run_id) if run_id is not None else new_run_id(),
            agent_id=agent_id,
            input=message,
            session_id=session_id,
            user_id=user_id,
        )
        self.queue.submit(record)
        return record.run_id

    async def asubmit(self, agent_id: str, message: str, **kwargs: str | None) -> str:
        return await asyncio.to_thread(self.submit, agent_id, message, **kwargs)

    def aevents(self, run_id: str, after: int = 0) -> AsyncIterator[RunOutputEvent]:
        """Replay then follow the run's events (after sequence number ``after``)."""

        async def only_events() -> AsyncIterator[RunOutputEvent]:
            async for batch in follow_log(self.control, run_id, after):
                for _, event in batch:
                    yield event

        return only_events()

    def events(self, run_id: str, after: int = 0) -> Iterator[RunOutputEvent]:
        """The sync twin of `aevents`."""
        stream = self.aevents(run_id, after)

        async def step() -> RunOutputEvent | None:
            return await anext(stream, None)

        while (event := runtime.call(step())) is not None:
            yield event

    def status(self, run_id: str) -> RunRecord | None:
        return self.control.get(run_id)

    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """True iff this call moved the run to CANCELLED."""
        return self.control.cancel(run_id, reason=reason).won
