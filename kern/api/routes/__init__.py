"""The HTTP routes, one module per resource: runs, agents, health."""

from __future__ import annotations

from typing import Any

from kern.api.schemas import ErrorBody

_DESCRIPTIONS = {
    401: "Missing or wrong `Authorization: Bearer <KERN_SECURITY_KEY>` (only when a key is set).",
    404: "Unknown agent, or no such run of this agent.",
    409: "The run id is taken, or the run already finished (`status` says how).",
    413: "The request body is larger than the limit (1 MiB by default).",
    415: "The body is neither JSON nor a form.",
    503: "The control plane (Redis) cannot be reached; retry shortly.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route may give."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}
