"""Identifiers: run ids, agent id slugs and owner (process) ids."""

from __future__ import annotations

import os
import re
import socket
import uuid

from kern.exceptions import InvalidRunId

# Letters, digits and . _ : - only: no Redis glob characters (* ? [ ]), no braces
# (they would break the cluster hash tag), no whitespace or control characters.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SLUG_DROP = re.compile(r"[^a-z0-9]+")


def new_run_id() -> str:
    return str(uuid.uuid4())


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if kern can store it, else raise `InvalidRunId`."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidRunId(
            f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_', ':' or '-'"
        )
    return run_id


def is_valid_run_id(run_id: str) -> bool:
    return isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) is not None


def slugify(name: str) -> str:
    """``"Story Writer"`` -> ``"story-writer"``."""
    slug = _SLUG_DROP.sub("-", name.lower()).strip("-")
    return slug or "agent"


def new_owner_id() -> str:
    """A name for one control-plane client: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
