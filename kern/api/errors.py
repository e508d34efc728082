"""Errors as JSON: every failure maps to a status and ``{"detail": ...}``, never a traceback.

InvalidRunId             422  (as a validation error on the run id)
UnknownAgent             404
RunIdInUse               409
other UsageError         400
ControlPlaneUnavailable  503  (with Retry-After; the next request tries again)
other KernError          500
anything else            500  "internal error" (logged with its traceback)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from kern.api.schemas import ErrorBody
from kern.exceptions import (
    ControlPlaneUnavailable,
    InvalidRunId,
    KernError,
    RunIdInUse,
    UnknownAgent,
    UsageError,
)
from kern.run.base import RunStatus

log = logging.getLogger("kern.api")

RETRY_AFTER_SECONDS = "1"


class RunConflict(KernError):
    """A cancel arrived after the run finished otherwise: 409 with its status."""

    def __init__(self, run_id: str, status: RunStatus) -> None:
        super().__init__(f"run {run_id} is already {status.value}")
        self.run_id = run_id
        self.status = status


def error_response(
    status_code: int, detail: str, *, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    body = ErrorBody.model_validate({"detail": detail, **extra})
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=status_code, headers=headers
    )


async def _kern_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RunConflict):
        return error_response(409, str(exc), status=exc.status, run_id=exc.run_id)
    if isinstance(exc, InvalidRunId):
        return JSONResponse(
            {"detail": [{"type": "value_error", "loc": ["run_id"], "msg": str(exc)}]},
            status_code=422,
        )
    if isinstance(exc, UnknownAgent):
        return error_response(404, str(exc))
    if isinstance(exc, RunIdInUse):
        return error_response(409, str(exc))
    if isinstance(exc, UsageError):
        return error_response(400, str(exc))
    if isinstance(exc, ControlPlaneUnavailable):
        log.warning("control plane unavailable: %s", exc)
        return error_response(
            503,
            f"control plane unavailable: {exc}",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return error_response(500, f"{type(exc).__name__}: {exc}")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Map kern's exceptions (and any other) to JSON answers on ``app``."""
    app.add_exception_handler(KernError, _kern_error)
    app.add_exception_handler(Exception, _unexpected)
