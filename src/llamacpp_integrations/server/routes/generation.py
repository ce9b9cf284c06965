"""``POST /v1/completions`` and ``POST /v1/chat/completions``: JSON, or SSE with ``stream: true``.

``/chat/completions`` is the chat route too, as in llama-server (whose ``/completions``
is its native ``/completion``: see ``routes/native.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.chat_events import input_tokens, render_prompt
from llamacpp_integrations.server.errors import ERROR_RESPONSES
from llamacpp_integrations.server.generation import EventStream, Generation, llama_kwargs, until_disconnected
from llamacpp_integrations.server.middleware import request_record
from llamacpp_integrations.server.schemas import ChatCompletionRequest, CompletionRequest
from llamacpp_integrations.server.state import server_state

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["generation"])

_ANSWERS = {
    **ERROR_RESPONSES,
    200: {
        "description": "The completion; with stream=true, its chunks as server-sent events, then [DONE].",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
}


@router.post("/v1/completions", responses=_ANSWERS)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """Continue a prompt (``text_completion``)."""
    return await _generate(body, request)


@router.post("/v1/chat/completions", responses=_ANSWERS)
@router.post("/chat/completions", responses=_ANSWERS, include_in_schema=False)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """Answer a conversation (``chat.completion``), with tools and structured output."""
    return await _generate(body, request)


@router.post("/v1/chat/completions/input_tokens", responses=ERROR_RESPONSES)
@router.post("/chat/completions/input_tokens", responses=ERROR_RESPONSES, include_in_schema=False)
async def count_chat_tokens(body: ChatCompletionRequest, request: Request) -> dict[str, int]:
    """``{"input_tokens": n}``: the prompt tokens this chat would use (its ``usage.prompt_tokens``)."""
    return await input_tokens(request, body)


async def _generate(body: CompletionRequest | ChatCompletionRequest, request: Request) -> Response:
    state = server_state(request)
    lease = await state.registry.acquire(body.model, generation=True)
    prompt = None
    if _verbose_asked(body, state.settings.verbose):
        try:
            prompt = await asyncio.to_thread(render_prompt, lease.llama, await llama_kwargs(lease, body))
        except BaseException:
            lease.release()
            raise
    generation = await Generation.start(lease, body, request_record(request.scope))
    if body.stream:
        return EventStream(generation)
    try:
        result = await until_disconnected(request, generation.response())
    finally:
        await generation.close()
    if prompt is not None:
        result["__verbose"] = _verbose(prompt, result)
    return JSONResponse(result)


def _verbose_asked(body: CompletionRequest | ChatCompletionRequest, server_verbose: bool) -> bool:
    """Whether a whole chat reply gets ``__verbose``: the request's ``verbose``, else the server's flag."""
    if not isinstance(body, ChatCompletionRequest) or body.stream:
        return False
    return body.verbose if body.verbose is not None else server_verbose


def _verbose(prompt: str, result: dict[str, Any]) -> dict[str, Any]:
    """llama-server's debug object of a finished chat: what the template rendered, and the counts."""
    usage = result.get("usage") or {}
    return {
        "prompt": prompt,
        "content": result["choices"][0]["message"].get("content") or "",
        "tokens_evaluated": usage.get("prompt_tokens", 0),
        "tokens_predicted": usage.get("completion_tokens", 0),
        "timings": result.get("timings"),
    }
