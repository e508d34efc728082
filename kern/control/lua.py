"""The run hash in Redis: its fields, and the Lua scripts behind every state change.

Each script touches only one run's keys (its hash and its event stream, one
cluster slot thanks to the ``{run_id}`` hash tag), so each transition is one
atomic compare-and-set. Indexes (`kern.control.keys`) are kept by plain
commands sent in the same pipeline: they are hints for listing and sweeping,
the run hash is the truth.

Every script is safe to run twice (redis-py re-sends a pipeline after a
dropped connection): create recognises its own incarnation nonce, start its
own owner, cancel its own cancel token.

A record is stored as a hash of `RunRecord` fields (``encode_record`` /
``decode_record``: floats as repr, ``stopped`` as 0/1, ``metrics`` as JSON,
None left out) plus ``inc`` (the incarnation nonce of this use of the run id)
and ``cancel_id`` (the token of the cancel that won).

Scripts are loaded once per server (SCRIPT LOAD on the first NOSCRIPT reply)
and called by EVALSHA; see `ScriptSet`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from kern.control.base import RunRecord
from kern.run.agent import Metrics

RECORD_FIELDS = frozenset(RunRecord.model_fields)

# KEYS: run, events. ARGV: inc, pending_ttl_ms, field, value, ...
# -> 1 created (or our own earlier attempt), 0 the id is taken.
CREATE = """
local inc = redis.call('HGET', KEYS[1], 'inc')
if inc then
  if inc == ARGV[1] then return 1 end
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: run. ARGV: inc, field, value, ... (the record already RUNNING, owned by the caller)
# -> 1 stored (or our own earlier attempt), 0 the id is taken.
# A run created and started by the same call (a local run): PENDING -> RUNNING
# happens inside this one script, so no reader ever sees it PENDING.
BEGIN = """
local inc = redis.call('HGET', KEYS[1], 'inc')
if inc then
  if inc == ARGV[1] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# KEYS: run. ARGV: owner, now. -> the record if it is now RUNNING for owner, else nil.
START = """
local v = redis.call('HMGET', KEYS[1], 'status', 'owner')
if v[1] == 'RUNNING' and v[2] == ARGV[1] then return redis.call('HGETALL', KEYS[1]) end
if v[1] ~= 'PENDING' then return false end
redis.call('HSET', KEYS[1], 'status', 'RUNNING', 'owner', ARGV[1], 'started_at', ARGV[2])
redis.call('PERSIST', KEYS[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: run, events. ARGV: status, now, ttl_ms, owner, inc, run_id, agent_id,
# content, metrics, error, reason. -> {1, record...}, or {0} when the hash
# belongs to another incarnation of the id (left untouched).
FINISH = """
local flat = redis.call('HGETALL', KEYS[1])
local h = {}
for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
local status = h['status']
local set = {'content', ARGV[8], 'metrics', ARGV[9], 'stopped', '1'}
if not status then
  for _, x in ipairs({'run_id', ARGV[6], 'agent_id', ARGV[7], 'owner', ARGV[4], 'inc', ARGV[5],
                      'created_at', ARGV[2]}) do table.insert(set, x) end
  status = 'RUNNING'
elseif ARGV[5] ~= '' and h['inc'] ~= ARGV[5] then
  return {0}
elseif ARGV[5] == '' and h['owner'] and h['owner'] ~= ARGV[4] then
  return {0}  -- not ours: never end another owner's run
end
if status == 'PENDING' or status == 'RUNNING' then
  for _, x in ipairs({'status', ARGV[1], 'ended_at', ARGV[2]}) do table.insert(set, x) end
  if ARGV[10] ~= '' then table.insert(set, 'error'); table.insert(set, ARGV[10]) end
  if ARGV[1] == 'CANCELLED' and ARGV[11] ~= '' then
    table.insert(set, 'cancel_reason'); table.insert(set, ARGV[11])
  end
end
redis.call('HSET', KEYS[1], unpack(set))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
for i = 1, #set, 2 do h[set[i]] = set[i + 1] end
local out = {}
for k, v in pairs(h) do table.insert(out, k); table.insert(out, v) end
return {1, out}
"""

# KEYS: run, events. ARGV: agent_id ('' = any), reason, now, ttl_ms, caller owner,
# cancel token, channel prefix. -> {0} unknown, {1, record} won, {2, record} not won.
# Stored first, then announced: the PUBLISH follows the HSET in the same script.
CANCEL = """
local v = redis.call('HMGET', KEYS[1], 'status', 'agent_id', 'owner', 'inc', 'cancel_id', 'run_id')
if not v[1] or (ARGV[1] ~= '' and v[2] ~= ARGV[1]) then return {0} end
if v[1] == 'CANCELLED' and v[5] == ARGV[6] then return {1, redis.call('HGETALL', KEYS[1])} end
if v[1] ~= 'PENDING' and v[1] ~= 'RUNNING' then return {2, redis.call('HGETALL', KEYS[1])} end
local stopped = '0'
if v[1] == 'PENDING' then stopped = '1' end
redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'cancel_reason', ARGV[2], 'ended_at', ARGV[3],
           'cancel_id', ARGV[6], 'stopped', stopped)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if v[1] == 'RUNNING' and v[3] and v[3] ~= ARGV[5] then
  redis.call('PUBLISH', ARGV[7] .. v[3], v[6] .. '\\n' .. (v[4] or '') .. '\\n' .. ARGV[2])
end
return {1, redis.call('HGETALL', KEYS[1])}
"""

# KEYS: run, events. ARGV: dead owner, now, ttl_ms, reason.
# RUNNING + that owner -> ERROR; a terminal run that owner never stopped -> stopped.
# -> {1 if moved to ERROR else 0, record (empty if unknown)}.
LOST = """
local v = redis.call('HMGET', KEYS[1], 'status', 'owner', 'stopped')
if v[2] ~= ARGV[1] then return {0, redis.call('HGETALL', KEYS[1])} end
local moved = 0
if v[1] == 'RUNNING' then
  moved = 1
  redis.call('HSET', KEYS[1], 'status', 'ERROR', 'error', ARGV[4], 'cancel_reason', ARGV[4],
             'ended_at', ARGV[2], 'stopped', '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
elseif v[1] ~= 'PENDING' and v[3] ~= '1' then
  redis.call('HSET', KEYS[1], 'stopped', '1')
end
return {moved, redis.call('HGETALL', KEYS[1])}
"""

# KEYS: run, events. ARGV: maxlen, ttl_ms (if the run is gone), id, json, id, json, ...
# An id already in the stream is skipped, so a re-sent batch adds nothing twice.
APPEND = """
for i = 3, #ARGV, 2 do
  redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], ARGV[i], 'e', ARGV[i + 1])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
elseif ttl == -2 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

# KEYS: run. ARGV: field, value, ... -> 1 if the vanished record was put back, else 0.
# The owner of a run whose record vanished (Redis restarted without persistence)
# puts it back RUNNING, so the run stays visible and cancellable.
RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


class LuaScript:
    """One script: its text and SHA1, called with EVALSHA on a client or pipeline."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def __call__(
        self,
        client: redis.Redis | Pipeline,
        keys: Sequence[str],
        args: Sequence[str | int | float | bytes],
    ) -> Any:
        return client.evalsha(self.sha, len(keys), *keys, *args)


class ScriptSet:
    """The scripts of the control plane, loaded into a server when it lacks them.

    A pipeline that hit NOSCRIPT (a new or restarted server) is sent again
    once after SCRIPT LOAD: every command in it is idempotent (see module doc).
    """

    def __init__(self) -> None:
        self.create = LuaScript("create", CREATE)
        self.begin = LuaScript("begin", BEGIN)
        self.start = LuaScript("start", START)
        self.finish = LuaScript("finish", FINISH)
        self.cancel = LuaScript("cancel", CANCEL)
        self.lost = LuaScript("lost", LOST)
        self.append = LuaScript("append", APPEND)
        self.restore = LuaScript("restore", RESTORE)
        self.all = (
            self.create,
            self.begin,
            self.start,
            self.finish,
            self.cancel,
            self.lost,
            self.append,
            self.restore,
        )

    def load(self, client: redis.Redis) -> None:
        for script in self.all:
            client.script_load(script.text)

    def execute(self, client: redis.Redis, build: Callable[[Pipeline], object]) -> list[Any]:
        """Build a pipeline with ``build`` and send it (one round trip), loading scripts on need."""
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            build(pipe)
            results: list[Any] = pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                self.load(client)
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        raise AssertionError("unreachable")


def encode_record(record: RunRecord, inc: str) -> list[str]:
    """The record as HSET field/value pairs; None fields are left out."""
    out = ["inc", inc]
    for name, value in record.model_dump(mode="json", exclude_none=True).items():
        if name == "metrics":
            out += [name, record.metrics.model_dump_json() if record.metrics else ""]
        elif name == "stopped":
            out += [name, "1" if value else "0"]
        else:
            out += [name, repr(value) if isinstance(value, float) else str(value)]
    return out


def decode_record(raw: Any, run_id: str) -> RunRecord | None:
    """A record from HGETALL (a dict, or a flat list from a script); None if empty."""
    fields = {k: v for k, v in as_dict(raw).items() if k in RECORD_FIELDS}
    if not fields:
        return None
    data: dict[str, Any] = {"run_id": run_id, "agent_id": ""}
    for name, value in fields.items():
        value = text(value)
        if name == "stopped":
            data[name] = value == "1"
        elif name == "metrics":
            data[name] = Metrics.model_validate_json(value) if value else None
        else:
            data[name] = value
    return RunRecord.model_validate(data)


def as_dict(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    if isinstance(raw, dict):
        return {text(k): v for k, v in raw.items()}
    items = list(raw)
    return {text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ms(seconds: float) -> str:
    return str(ms_int(seconds))


def ms_int(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def seq_of(entry_id: Any) -> int:
    return int(text(entry_id).split("-", 1)[0])


def stream_field(fields: dict[Any, Any], name: str) -> str | bytes:
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        raise ValueError(f"stream entry without {name!r}")
    return value  # type: ignore[no-any-return]


def describe(client: redis.Redis) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
