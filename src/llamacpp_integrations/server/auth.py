"""API-key check: with ``--api_key``, protected endpoints need ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llamacpp_integrations.server.errors import APIError
from llamacpp_integrations.server.state import server_state

_bearer = HTTPBearer(auto_error=False, description="The key the server was started with (--api_key).")


def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Refuse with 401 unless the server has no key or the request carries it (compared in constant time)."""
    expected = server_state(request).settings.api_key
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if credentials is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise APIError(
            401,
            "Missing or wrong API key: send the header 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
