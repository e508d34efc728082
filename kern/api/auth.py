"""Bearer-key authentication: ``Authorization: Bearer <KERN_SECURITY_KEY>``.

The key is compared in constant time (`hmac.compare_digest`) so response
timing tells nothing about how much of a guess was right.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, params, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="The server's KERN_SECURITY_KEY.")


def key_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented key with the expected one."""
    # Starlette decodes headers as latin-1: encoding back gives the bytes sent.
    return hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode("utf-8"))


def require_key(expected: str) -> params.Depends:
    """A FastAPI dependency refusing requests without the bearer key (401)."""

    def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if credentials is None or not key_matches(credentials.credentials, expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or invalid bearer key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return params.Depends(check)
