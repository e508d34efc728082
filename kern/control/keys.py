"""Every Redis key, channel and TTL the Redis control plane uses, in one place.

All names start with a prefix (default ``kern``) so several deployments, or
test runs, share one Redis without meeting. Per-run keys carry the run id as a
Redis Cluster hash tag (``{run_id}``) so a run's hash and its event stream
live in one slot and one Lua script may touch both; per-owner keys do the same
with the owner id.

    {p}:run:{<run_id>}              hash    the run record. PENDING: expires after
                                            PENDING_TTL (a run nobody starts goes);
                                            RUNNING: no TTL (the owner's lease guards
                                            it); terminal: expires after terminal_ttl
    {p}:run:{<run_id>}:events       stream  the run's event log, ids ``<seq>-0``,
                                            MAXLEN ~ MAX_EVENTS_PER_RUN; expires with
                                            the run (its TTL copied at every append)
    {p}:owner:{<owner_id>}:lease    string  the owner's heartbeat, SET PX lease_ttl every
                                            lease_ttl/3; gone = the process is dead
    {p}:owner:{<owner_id>}:runs     set     run ids the owner started and has not
                                            finished; deleted when the owner is swept
    {p}:owners                      zset    owner id -> time of its last heartbeat; the
                                            sweeper's index of leases to check; an owner
                                            leaves it when swept or closed cleanly
    {p}:runs:active                 zset    RUNNING run ids -> started_at (added by start,
                                            removed when the run ends), for listing
    {p}:runs:recent                 zset    run ids -> created_at, for ``list_runs``;
                                            trimmed to MAX_RECENT_RUNS on every create
                                            and by age (the longest TTL) every TRIM_INTERVAL
    {p}:queue:<agent_id>            stream  the agent's run queue (`kern.queue`); no TTL,
                                            entries are deleted when their run ends
    {p}:agents                      hash    agent id -> JSON, written by workers serving it;
                                            no TTL, one field per agent
    {p}:owner:<owner_id>            channel (pub/sub, not a key) cancels for that owner

The Redis URL comes from ``KERN_REDIS_URL`` (see `kern.control`), the prefix
from ``KERN_REDIS_PREFIX`` when not passed in code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kern.control.base import DEFAULT_TERMINAL_TTL, MAX_EVENTS_PER_RUN

ENV_PREFIX = "KERN_REDIS_PREFIX"
DEFAULT_PREFIX = "kern"

TERMINAL_TTL = DEFAULT_TERMINAL_TTL
"""Seconds a finished run (record and events) stays readable: 24 h."""

PENDING_TTL = DEFAULT_TERMINAL_TTL
"""Seconds a run may wait PENDING before its record expires (a creator that died first)."""

LEASE_TTL = 10.0
"""Seconds an owner's lease outlives its last heartbeat; heartbeats every LEASE_TTL/3.
A dead owner's runs end ERROR ``worker_lost`` within LEASE_TTL + SWEEP_INTERVAL."""

SWEEP_INTERVAL = 1.0
"""Seconds between two sweeps for expired leases by one process's listener thread."""

RECONCILE_INTERVAL = 0.5
"""Seconds between two re-reads of the stored state of a process's own runs (<= 1 s)."""

TRIM_INTERVAL = 60.0
"""Seconds between two trims of the run indexes by age, per listener thread."""

MAX_RECENT_RUNS = 10_000
"""Entries kept in the recent-runs index (the oldest are dropped on create)."""

MAX_EVENTS = MAX_EVENTS_PER_RUN
"""Approximate cap of one run's event stream (XADD MAXLEN ~)."""

_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe key prefix (no braces, globs or spaces)."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"invalid Redis key prefix {prefix!r}: use letters, digits, '.', '_', ':' or '-'"
        )
    return prefix


def run(prefix: str, run_id: str) -> str:
    """The run record (hash)."""
    return f"{prefix}:run:{{{run_id}}}"


def events(prefix: str, run_id: str) -> str:
    """The run's event log (stream), in the run's hash slot."""
    return f"{prefix}:run:{{{run_id}}}:events"


def lease(prefix: str, owner_id: str) -> str:
    """The owner's heartbeat (string with a PX TTL)."""
    return f"{prefix}:owner:{{{owner_id}}}:lease"


def owner_runs(prefix: str, owner_id: str) -> str:
    """Runs the owner started and has not finished (set)."""
    return f"{prefix}:owner:{{{owner_id}}}:runs"


def channel_prefix(prefix: str) -> str:
    """Owner channels are this plus the owner id (the cancel script builds them so)."""
    return f"{prefix}:owner:"


def channel(prefix: str, owner_id: str) -> str:
    """The pub/sub channel on which the owner hears cancels of its runs."""
    return channel_prefix(prefix) + owner_id


def owners(prefix: str) -> str:
    """Owner id -> time of its last heartbeat (zset), what sweepers check."""
    return f"{prefix}:owners"


def active(prefix: str) -> str:
    """RUNNING run ids -> started_at (zset)."""
    return f"{prefix}:runs:active"


def recent(prefix: str) -> str:
    """Run ids -> created_at (zset), trimmed on create and by age."""
    return f"{prefix}:runs:recent"


def queue(prefix: str, agent_id: str) -> str:
    """The run queue of one agent (stream, consumer group ``workers``). No TTL: an
    entry is deleted once its run has ended, so it only holds unfinished runs."""
    return f"{prefix}:queue:{agent_id}"


def agents(prefix: str) -> str:
    """Agent id -> JSON about the agent, written by workers that serve it (hash). No
    TTL: one field per agent ever served, rewritten at each worker start."""
    return f"{prefix}:agents"


def pattern(prefix: str) -> str:
    """A SCAN pattern matching every key under ``prefix`` (for tests and cleanup)."""
    return f"{prefix}:*"


@dataclass(frozen=True, slots=True)
class Keys:
    """The names above, bound to one prefix."""

    prefix: str = DEFAULT_PREFIX

    def run(self, run_id: str) -> str:
        return run(self.prefix, run_id)

    def events(self, run_id: str) -> str:
        return events(self.prefix, run_id)

    def lease(self, owner_id: str) -> str:
        return lease(self.prefix, owner_id)

    def owner_runs(self, owner_id: str) -> str:
        return owner_runs(self.prefix, owner_id)

    def channel(self, owner_id: str) -> str:
        return channel(self.prefix, owner_id)

    @property
    def channel_prefix(self) -> str:
        return channel_prefix(self.prefix)

    @property
    def owners(self) -> str:
        return owners(self.prefix)

    @property
    def active(self) -> str:
        return active(self.prefix)

    @property
    def recent(self) -> str:
        return recent(self.prefix)
