"""Reading the body of ``POST /agents/{agent_id}/runs``: a form (AgentOS clients) or JSON.

Both go through the same `RunCreate` model, so the rules and the 422 errors
are the same whichever the client sends. A request without a content type is
read as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from kern.api.schemas import RunCreate

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

# The OpenAPI description of the body (parsed by hand, so FastAPI cannot infer it).
OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": RunCreate.model_json_schema()},
            "application/x-www-form-urlencoded": {"schema": RunCreate.model_json_schema()},
            "multipart/form-data": {"schema": RunCreate.model_json_schema()},
        },
    }
}


async def read_run_create(request: Request) -> RunCreate:
    """The run the client asks for; `RequestValidationError` (422) for a bad body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data: object
    if content_type in _FORM_TYPES:
        data = await _form(request)
    elif content_type in ("", "application/json") or content_type.endswith("+json"):
        data = await _json(request)
    else:
        raise HTTPException(415, f"send the run as JSON or as a form, not {content_type!r}")
    try:
        return RunCreate.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            exc.errors(include_url=False, include_context=False, include_input=False)
        ) from None


async def _json(request: Request) -> object:
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": f"malformed JSON: {exc}"}]
        ) from None


async def _form(request: Request) -> dict[str, object]:
    try:
        form = await request.form()
    except HTTPException as exc:  # starlette's answer to a malformed multipart body
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body",), "msg": f"malformed form: {exc.detail}"}]
        ) from None
    data: dict[str, object] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            data.setdefault(key, value)  # the first of repeated fields wins
    await form.close()
    return data
