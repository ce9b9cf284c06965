"""``POST /v1/responses`` (OpenAI's Responses API), ``GET /v1/responses/{id}`` and
``POST /v1/responses/input_tokens``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.chat_events import ChatEvents, answer, input_tokens
from llamacpp_integrations.server.errors import ERROR_RESPONSES, APIError
from llamacpp_integrations.server.middleware import request_record
from llamacpp_integrations.server.openai_responses import ResponsesRequest, ResponseStore
from llamacpp_integrations.server.responses_run import ResponseRun, Telemetry
from llamacpp_integrations.server.state import server_state

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["responses"])

_ANSWERS = {
    **ERROR_RESPONSES,
    200: {
        "description": "The response; with stream=true, its events (response.created, ..., "
        "response.completed) as server-sent events.",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
}


def response_store(request: Request) -> ResponseStore:
    """The application's store of recent responses (created on first use)."""
    state = request.app.state
    store = getattr(state, "response_store", None)
    if store is None:
        store = state.response_store = ResponseStore()
    return store


Store = Annotated[ResponseStore, Depends(response_store)]


@router.post("/v1/responses", responses=_ANSWERS)
@router.post("/responses", responses=_ANSWERS, include_in_schema=False)
async def create_response(body: ResponsesRequest, request: Request, store: Store) -> Response:
    """Answer ``input`` (after ``previous_response_id``'s conversation), with tools and structured output.

    A stream takes llama-server's ``return_progress`` and ``timings_per_token``.
    """
    conversation = _conversation(body, store)
    chat = body.chat_request(conversation)
    lease = await server_state(request).registry.acquire(chat.model, generation=True)
    record = request_record(request.scope)
    if body.stream and (body.return_progress or body.timings_per_token):
        events, telemetry = await Telemetry.start(lease, body, chat, record)
        run = ResponseRun(events, body, conversation, store, telemetry)
    else:
        run = ResponseRun(await ChatEvents.start(lease, chat, record), body, conversation, store)
    return await answer(request, run, body.stream)


@router.post("/v1/responses/input_tokens", responses=ERROR_RESPONSES)
@router.post("/responses/input_tokens", responses=ERROR_RESPONSES, include_in_schema=False)
async def count_input_tokens(body: ResponsesRequest, request: Request, store: Store) -> dict[str, Any]:
    """``{"object": "response.input_tokens", "input_tokens": n}``: the prompt tokens this request
    would use (its ``usage.input_tokens``), after ``previous_response_id``'s conversation."""
    counted = await input_tokens(request, body.chat_request(_conversation(body, store)))
    return {"object": "response.input_tokens", **counted}


def _conversation(body: ResponsesRequest, store: ResponseStore) -> list[dict[str, Any]]:
    """The messages ``body`` continues (``previous_response_id``'s) followed by its ``input``."""
    return store.history(body.previous_response_id) + body.input_messages()


@router.get("/v1/responses/{response_id}", responses=ERROR_RESPONSES)
async def get_response(response_id: str, store: Store) -> dict[str, object]:
    """A response this server still keeps (the last ones only: see ``RESPONSE_STORE_SIZE``)."""
    stored = store.get(response_id)
    if stored is None:
        raise APIError(404, f"Response with id {response_id!r} not found", code="not_found")
    return stored.response
