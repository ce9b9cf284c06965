"""llama-server's native endpoints: ``/completion``, ``/infill``, ``/embedding``, ``/apply-template``,
``/props`` and ``/slots``.

As in llama-server, ``/completions`` is ``/completion`` and ``/embeddings`` is
``/embedding`` (their OpenAI forms are under ``/v1``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.chat_events import render_prompt
from llamacpp_integrations.server.errors import ERROR_RESPONSES, APIError
from llamacpp_integrations.server.generation import EventStream, llama_kwargs, until_disconnected
from llamacpp_integrations.server.infill import InfillRequest
from llamacpp_integrations.server.middleware import request_record
from llamacpp_integrations.server.models import Lease
from llamacpp_integrations.server.native import NativeBatch, NativeCompletion, normalize, props, slots
from llamacpp_integrations.server.schemas import (
    ApplyTemplateRequest,
    NativeCompletionRequest,
    NativeEmbeddingRequest,
)
from llamacpp_integrations.server.state import server_state

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["llama-server"])

_ANSWERS = {
    **ERROR_RESPONSES,
    200: {
        "description": "The completion; with stream=true, its pieces as server-sent events, the last "
        "with stop=true (no [DONE]).",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
}


@router.post("/completion", responses=_ANSWERS)
@router.post("/completions", responses=_ANSWERS, include_in_schema=False)
async def completion(body: NativeCompletionRequest, request: Request) -> Response:
    """Continue a prompt (text, token ids or both): ``content``, ``stop_type``, ``timings``, ...

    Several prompts (a batch) are answered with a list of those objects, in order.
    """
    registry = server_state(request).registry
    prompts = body.prompts()
    leases: list[Lease] = []
    try:
        for _prompt in prompts:
            leases.append(await registry.acquire(body.model, generation=True))
    except BaseException:
        for lease in leases:
            lease.release()
        raise
    started = await NativeCompletion.start(leases, body, request_record(request.scope), prompts)
    return await _answer(started[0] if len(started) == 1 else NativeBatch(started), body.stream, request)


async def _answer(generation: NativeCompletion | NativeBatch, stream: bool, request: Request) -> Response:
    if stream:
        return EventStream(generation)
    try:
        return JSONResponse(await until_disconnected(request, generation.response()))
    finally:
        await generation.close()


@router.post("/infill", responses=_ANSWERS)
async def infill(body: InfillRequest, request: Request) -> Response:
    """Fill the gap between ``input_prefix`` and ``input_suffix`` (a code model's FIM tokens; 400
    ``not_supported`` without them): a ``/completion``'s answer."""
    lease = await server_state(request).registry.acquire(body.model, generation=True)
    try:
        completion = await asyncio.to_thread(body.with_tokens, lease.llama)
    except BaseException:
        lease.release()
        raise
    record = request_record(request.scope)
    (generation,) = await NativeCompletion.start([lease], completion, record, completion.prompts()[:1])
    return await _answer(generation, completion.stream, request)


@router.post("/embedding", responses=ERROR_RESPONSES)
@router.post("/embeddings", responses=ERROR_RESPONSES, include_in_schema=False)
async def embedding(body: NativeEmbeddingRequest, request: Request) -> JSONResponse:
    """``[{"index", "embedding": [vector]}, ...]``, each vector scaled as ``embd_normalize`` says."""
    lease = await server_state(request).registry.acquire(body.model)
    try:
        result = await asyncio.to_thread(lease.llama.create_embedding, body.texts(), lease.alias)
    finally:
        lease.release()
    request_record(request.scope).prompt_tokens = result["usage"]["prompt_tokens"]
    items = [
        {"index": item["index"], "embedding": [normalize(item["embedding"], body.embd_normalize)]}
        for item in result["data"]
    ]
    return JSONResponse(items)


@router.post("/apply-template", responses=ERROR_RESPONSES)
async def apply_template(body: ApplyTemplateRequest, request: Request) -> dict[str, str]:
    """Chat messages (and tools) -> ``{"prompt": text}``, rendered with the model's chat template.

    ``add_generation_prompt: false`` leaves out the opening of the assistant's turn; a last
    assistant message is left open to be continued, as on the chat route.
    """
    lease = await server_state(request).registry.acquire(body.model)
    try:
        kwargs = await llama_kwargs(lease, body)
        prompt = await asyncio.to_thread(render_prompt, lease.llama, kwargs)
    finally:
        lease.release()
    return {"prompt": prompt}


@router.get("/props", responses=ERROR_RESPONSES)
async def get_props(request: Request, model: str | None = None) -> dict[str, Any]:
    """The model's default generation settings, slots, chat template and build (``?model=`` picks one).

    With ``--sleep_idle_seconds`` the model is described as it was when it first loaded: asking
    neither wakes it nor counts as using it.
    """
    registry = server_state(request).registry
    entry = registry.resolve(model)
    if entry.description is not None:
        return {**entry.description, "is_sleeping": entry.sleeping}
    lease = await registry.acquire(model)
    try:
        return await asyncio.to_thread(props, lease)
    finally:
        lease.release()


@router.get("/slots", responses=ERROR_RESPONSES)
async def get_slots(request: Request, model: str | None = None, fail_on_no_slot: bool = False) -> Response:
    """Each slot of the model: whether it is processing, its cached tokens, its request's progress.

    With ``?fail_on_no_slot=1``: 503 when every slot is busy.
    """
    lease = await server_state(request).registry.acquire(model)
    try:
        found = slots(lease)
    finally:
        lease.release()
    if fail_on_no_slot and all(slot["is_processing"] for slot in found):
        raise APIError(503, "Every slot is busy", "server_error", code="no_slot_available")
    return JSONResponse(found)
