"""Reading the body of ``POST /agents/{agent_id}/runs``: a form (AgentOS clients) or JSON.

Both go through the same `RunCreate` model, so the rules and the 422 errors
are the same whichever the client sends. A request without a content type is
read as JSON.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import parse_qsl

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser

from kern.api.schemas import RunCreate

_URLENCODED = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_FORM_TYPES = (_URLENCODED, _MULTIPART)
MAX_FORM_FIELDS = 1000

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
        data = await _form(request, multipart=content_type == _MULTIPART)
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


async def _form(request: Request, *, multipart: bool) -> dict[str, object]:
    """The form's fields (the first of repeated ones); 422 for text that is not UTF-8.

    Starlette would replace bad bytes (urlencoded) or read them as latin-1 (multipart);
    kern refuses them instead, as it refuses a JSON body that is not UTF-8.
    """
    try:
        if multipart:
            items = await _multipart(request)
        else:
            items = _urlencoded(await request.body())
    except (MultiPartException, UnicodeDecodeError, ValueError) as exc:
        msg = exc.message if isinstance(exc, MultiPartException) else str(exc)
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body",), "msg": f"malformed form: {msg}"}]
        ) from None
    data: dict[str, object] = {}
    for key, value in items:
        data.setdefault(key, value)  # the first of repeated fields wins
    return data


def _urlencoded(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(
        body.decode("utf-8"),
        keep_blank_values=True,
        encoding="utf-8",
        errors="strict",
        max_num_fields=MAX_FORM_FIELDS,
    )


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's parser, but a text field that is not in its charset is an error."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is not None:
            super().on_part_end()
            return
        try:
            value = part.data.decode(self._charset or "utf-8")
        except (UnicodeDecodeError, LookupError):
            raise MultiPartException(
                f"field {part.field_name!r} is not valid {self._charset or 'utf-8'} text"
            ) from None
        self.items.append((part.field_name, value))


async def _multipart(request: Request) -> list[tuple[str, str]]:
    async with contextlib.aclosing(request.stream()) as stream:
        parser = _StrictMultiPartParser(
            request.headers, stream, max_fields=MAX_FORM_FIELDS, max_files=MAX_FORM_FIELDS
        )
        form = await parser.parse()
    try:
        return [(key, value) for key, value in form.multi_items() if isinstance(value, str)]
    finally:
        await form.close()
