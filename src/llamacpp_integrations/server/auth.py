"""API-key check: with ``--api_key``, protected endpoints need the key, as a bearer token or ``x-api-key``."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llamacpp_integrations.server.errors import APIError
from llamacpp_integrations.server.state import server_state

_bearer = HTTPBearer(auto_error=False, description="The key the server was started with (--api_key).")


def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_api_key: Annotated[str | None, Header(description="The server's --api_key.")] = None,
) -> None:
    """Refuse with 401 unless the server has no key or the request carries it (compared in constant time).

    The key may come as ``Authorization: Bearer <key>`` (OpenAI's clients) or ``x-api-key: <key>``
    (Anthropic's), on every protected route, as llama-server accepts both.
    """
    expected = server_state(request).settings.api_key
    if expected is None:
        return
    for given in (credentials.credentials if credentials is not None else None, x_api_key):
        if given is not None and hmac.compare_digest(given.encode(), expected.encode()):
            return
    raise APIError(
        401,
        "Missing or wrong API key: send the header 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
        "authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )
