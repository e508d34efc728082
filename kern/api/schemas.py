"""What the HTTP API reads and writes: request and response bodies (pydantic models).

Events and `RunOutput` come from `kern.run.agent` unchanged: the JSON a client
reads over HTTP is the JSON every other transport uses.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from kern.control.base import RunRecord
from kern.ids import is_valid_run_id
from kern.run.agent import Metrics
from kern.run.base import RunStatus


def _utf8_text(value: str) -> str:
    """``value`` if it can be stored and sent as UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _identifier(value: str) -> str:
    """``value`` if it is UTF-8 text without control characters (an id, not prose)."""
    _utf8_text(value)
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("must not contain control characters")
    return value


def _run_id(value: str) -> str:
    if not is_valid_run_id(value):
        raise ValueError("use 1-128 letters, digits, '.', '_', ':' or '-'")
    return value


Text = Annotated[str, AfterValidator(_utf8_text)]
"""Free text: any Unicode a client can send as UTF-8, newlines and tabs included."""
Identifier = Annotated[str, AfterValidator(_identifier)]
"""A client's id (session, user): UTF-8 text without control characters."""
RunIdField = Annotated[str, AfterValidator(_run_id)]


class RunCreate(BaseModel):
    """The body of ``POST /agents/{agent_id}/runs``, as a form or as JSON."""

    model_config = ConfigDict(extra="ignore")

    message: Text = Field(min_length=1, description="The user's input.")
    stream: bool = Field(default=True, description="Stream events (SSE) instead of one JSON.")
    session_id: Identifier | None = Field(
        default=None, description="The conversation (no control characters)."
    )
    user_id: Identifier | None = Field(
        default=None, description="The user (no control characters)."
    )
    run_id: RunIdField | None = Field(
        default=None,
        description="Choose the run id (1-128 letters, digits, '.', '_', ':' or '-').",
    )
    background: bool = Field(
        default=False, description="Answer 202 at once; follow with GET .../events."
    )


class RunAccepted(BaseModel):
    """The answer to a background run: where to find it."""

    run_id: str
    agent_id: str
    status: RunStatus


class RunView(BaseModel):
    """One run as the API shows it: its stored record plus the content streamed so far."""

    run_id: str
    agent_id: str
    status: RunStatus
    session_id: str | None = None
    user_id: str | None = None
    owner: str | None = Field(default=None, description="The process executing the run.")
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    stopped: bool = Field(description="The owner has stopped executing and saved the content.")
    content: str = ""
    error: str | None = None
    cancel_reason: str | None = None
    metrics: Metrics | None = None

    @classmethod
    def from_record(cls, record: RunRecord, content: str | None = None) -> RunView:
        """The view of ``record``; ``content`` replaces the stored content while the run goes on."""
        return cls(
            run_id=record.run_id,
            agent_id=record.agent_id,
            status=record.status,
            session_id=record.session_id,
            user_id=record.user_id,
            owner=record.owner,
            created_at=record.created_at,
            started_at=record.started_at,
            ended_at=record.ended_at,
            stopped=record.stopped,
            content=record.content if content is None else content,
            error=record.error,
            cancel_reason=record.cancel_reason,
            metrics=record.metrics,
        )


class AgentView(BaseModel):
    """An agent served by this API."""

    id: str
    name: str
    description: str | None = None
    model: str


class ControlPlaneHealth(BaseModel):
    backend: str
    reachable: bool
    error: str | None = None


class Health(BaseModel):
    """``GET /health``: 200 when the control plane answers, else 503."""

    status: Literal["ok", "unavailable"]
    owner: str = Field(description="This API process (its id as a run owner).")
    dispatch: str
    agents: int
    control_plane: ControlPlaneHealth


class ErrorBody(BaseModel):
    """Every error answer: a message, and for a finished run its status."""

    detail: str | list[dict[str, object]]
    status: RunStatus | None = None
    run_id: str | None = None
