"""``GET /health``, ``GET /v1/models`` and ``GET /metrics``: answered at once, never behind generation."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.errors import ERROR_RESPONSES
from llamacpp_integrations.server.models import ModelEntry
from llamacpp_integrations.server.state import server_state

router = APIRouter(tags=["server"])
_protected = [Depends(require_api_key)]
_STARTED = int(time.time())


@router.get("/health", responses={503: ERROR_RESPONSES[503]})
async def health(request: Request) -> Response:
    """200 ``{"status": "ok"}`` once the default model is loaded; 503 while loading or shutting down."""
    error = server_state(request).health_error()
    return error.response() if error is not None else JSONResponse({"status": "ok"})


@router.get("/v1/models", dependencies=_protected, responses=ERROR_RESPONSES)
async def list_models(request: Request) -> dict[str, Any]:
    """Every model served here, loaded or not."""
    entries = server_state(request).registry.entries
    return {"object": "list", "data": [_model_card(entry) for entry in entries]}


@router.get("/v1/models/{model:path}", dependencies=_protected, responses=ERROR_RESPONSES)
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    """One served model, by any of its names."""
    return _model_card(server_state(request).registry.resolve(model))


@router.get("/metrics", dependencies=_protected, response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text: requests, tokens in and out, tokens/s, and per model its slots and queue."""
    state = server_state(request)
    text = state.metrics.render(state.registry.gauges())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def _model_card(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.alias,
        "object": "model",
        "created": _STARTED,
        "owned_by": "llamacpp-integrations",
        "loaded": entry.llama is not None,
    }
