"""``GET /agents``: the agents this API serves."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from kern.api.routes import error_responses
from kern.api.schemas import AgentView
from kern.api.state import ApiState, get_state

router = APIRouter(tags=["agents"])


@router.get(
    "/agents",
    response_model=list[AgentView],
    summary="List agents",
    responses=error_responses(401),
)
async def list_agents(state: Annotated[ApiState, Depends(get_state)]) -> list[AgentView]:
    return [
        AgentView(id=a.id, name=a.name, description=a.description, model=a.model.id)
        for a in state.agents.values()
    ]
