"""Property-based checks of the HTTP API against its own OpenAPI schema (schemathesis).

Every route gets generated inputs, valid and not: no answer may be a 5xx, and
every answer must match the status codes, content types and bodies the schema
documents.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from api_support import SHORT_TEXT  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from kern.agent import Agent  # noqa: E402
from kern.api import create_app  # noqa: E402
from kern.api.settings import ApiSettings  # noqa: E402
from kern.control.memory import MemoryControlPlane  # noqa: E402
from kern.models.offline import OfflineModel  # noqa: E402

_plane = MemoryControlPlane()
_app = create_app(
    [Agent(name="fast", model=OfflineModel(SHORT_TEXT), control=_plane)],
    control=_plane,
    settings=ApiSettings(keepalive=1.0),
)
schema = schemathesis.openapi.from_asgi("/openapi.json", _app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate()
