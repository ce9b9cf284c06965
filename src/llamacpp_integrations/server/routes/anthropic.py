"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` (Anthropic's Messages API).

Every answer of these routes, errors included (bad input, a wrong key, an unknown model),
has Anthropic's shape; the key may come as ``x-api-key`` as well as ``Authorization: Bearer``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from llamacpp_integrations.server.anthropic_messages import (
    CountTokensRequest,
    ErrorBody,
    MessageRun,
    MessagesRequest,
    error_body,
)
from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.chat_events import ChatEvents, answer, input_tokens
from llamacpp_integrations.server.errors import api_error
from llamacpp_integrations.server.middleware import request_record
from llamacpp_integrations.server.state import server_state

logger = logging.getLogger("llamacpp_integrations.server")


class AnthropicRoute(APIRoute):
    """A route whose errors, raised anywhere in it (validation, auth, the model), have Anthropic's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as raised:
                error = api_error(raised)
                if error.status >= 500:
                    logger.error("%s %s failed", request.method, request.url.path, exc_info=raised)
                return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)

        return handle


router = APIRouter(dependencies=[Depends(require_api_key)], tags=["anthropic"], route_class=AnthropicRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Malformed or invalid request (invalid_request_error).",
        401: "Missing or wrong API key (authentication_error).",
        404: "Unknown model (not_found_error).",
        503: "Queue full (overloaded_error, with Retry-After), or shutting down.",
    }.items()
}


@router.post(
    "/v1/messages",
    responses={
        **_ERRORS,
        200: {
            "description": "The message; with stream=true, Anthropic's events (message_start, ..., "
            "message_stop) as server-sent events.",
            "content": {"application/json": {}, "text/event-stream": {}},
        },
    },
)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    """Answer a conversation, with tools, thinking and stop sequences."""
    chat = body.chat_request(max_tokens=body.max_tokens)
    lease = await server_state(request).registry.acquire(chat.model, generation=True)
    events = await ChatEvents.start(lease, chat, request_record(request.scope))
    return await answer(request, MessageRun(events, body), body.stream)


@router.post("/v1/messages/count_tokens", responses=_ERRORS)
async def count_tokens(body: CountTokensRequest, request: Request) -> dict[str, int]:
    """``{"input_tokens": n}``: the prompt tokens a message request with these fields would use."""
    return await input_tokens(request, body.chat_request())
