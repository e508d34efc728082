"""``GET /health``: is this API up, and can it reach its control plane? Never needs a key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from kern.api.schemas import ControlPlaneHealth, Health
from kern.api.state import ApiState, get_state
from kern.exceptions import KernError

router = APIRouter(tags=["health"])

PROBE_RUN_ID = "kern-health-probe"
"""A run id that is read, never written: the read proves the control plane answers."""


@router.get(
    "/health",
    response_model=Health,
    summary="Health",
    responses={503: {"model": Health, "description": "The control plane is unreachable."}},
)
async def health(state: Annotated[ApiState, Depends(get_state)]) -> JSONResponse:
    error = None
    try:
        await state.control.aget(PROBE_RUN_ID)
    except Exception as exc:  # a probe: any failure means unhealthy, never a 500
        error = str(exc) if isinstance(exc, KernError) else f"{type(exc).__name__}: {exc}"
    body = Health(
        status="ok" if error is None else "unavailable",
        owner=state.control.owner_id,
        dispatch=state.dispatcher.kind,
        agents=len(state.agents),
        control_plane=ControlPlaneHealth(
            backend=type(state.control).__name__, reachable=error is None, error=error
        ),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if error is None else 503)
