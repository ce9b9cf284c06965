"""``GET /health``, ``GET /v1/models`` (and ``/models``) and ``GET /metrics``: answered at once,
never behind generation."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.errors import ERROR_RESPONSES, APIError
from llamacpp_integrations.server.models import ModelEntry
from llamacpp_integrations.server.state import server_state

router = APIRouter(tags=["server"])
_protected = [Depends(require_api_key)]
_STARTED = int(time.time())


@router.get("/health", responses={503: ERROR_RESPONSES[503]})
async def health(request: Request) -> Response:
    """200 ``{"status": "ok"}`` once the default model is loaded; 503 while loading or shutting down.

    Also 503 (``rpc_unavailable``) once an RPC worker of a served model stopped:
    ``unusable_models`` then names each such model, its workers and the lost ones.
    Only a restart (with the workers back) makes those models usable again.
    """
    state = server_state(request)
    error = state.health_error()
    if error is not None:
        return error.response()
    unusable = state.unusable_models()
    if not unusable:
        return JSONResponse({"status": "ok"})
    names = ", ".join(model["model"] for model in unusable)
    error = APIError(
        503,
        f"Unusable until the server restarts with its RPC workers back: {names}. {unusable[0]['message']}",
        "server_error",
        code="rpc_unavailable",
    )
    return JSONResponse({**error.body(), "unusable_models": unusable}, status_code=503)


@router.get("/v1/models", dependencies=_protected, responses=ERROR_RESPONSES)
@router.get("/models", dependencies=_protected, responses=ERROR_RESPONSES, include_in_schema=False)
async def list_models(request: Request) -> dict[str, Any]:
    """Every model served here, loaded or not: its id (its first alias in sorted order), aliases and tags."""
    entries = server_state(request).registry.entries
    return {"object": "list", "data": [_model_card(entry) for entry in entries]}


@router.get("/v1/models/{model:path}", dependencies=_protected, responses=ERROR_RESPONSES)
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    """One served model, by any of its names."""
    return _model_card(server_state(request).registry.resolve(model, any_name=False))


@router.get("/metrics", dependencies=_protected, response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text: requests, tokens in and out, tokens/s, per model its slots and queue, and
    llama-server's series.  Never wakes a sleeping model.

    The ``Process-Start-Time-Unix`` header (llama-server's, for rates) keeps its capitals.
    """
    text = server_state(request).metrics_text()
    response = PlainTextResponse(text, media_type="text/plain; version=0.0.4")
    # Raw ASGI bytes: Starlette lowercases the names given as headers=; the HTTP layer (h11) keeps these.
    response.raw_headers.append((b"Process-Start-Time-Unix", str(_STARTED).encode()))
    return response


def _model_card(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.alias,
        "aliases": entry.settings.aliases,
        "tags": entry.settings.tags,
        "object": "model",
        "created": _STARTED,
        "owned_by": "llamacpp-integrations",
        "loaded": entry.llama is not None,
    }
