"""``POST /v1/rerank`` (and llama-server's ``/rerank``, ``/v1/reranking``, ``/reranking``): documents
ranked against a query by a reranker model, best first."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.errors import ERROR_RESPONSES
from llamacpp_integrations.server.middleware import request_record
from llamacpp_integrations.server.rerank import RerankRequest
from llamacpp_integrations.server.state import server_state

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["rerank"])

_ANSWERS: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {
        "description": "{object, model, results: [{index, relevance_score, document?}], usage}; "
        "TEI's list [{index, score, text?}] when the request named its documents 'texts'."
    },
}


@router.post("/v1/rerank", responses=_ANSWERS)
@router.post("/rerank", responses=_ANSWERS, include_in_schema=False)
@router.post("/v1/reranking", responses=_ANSWERS, include_in_schema=False)
@router.post("/reranking", responses=_ANSWERS, include_in_schema=False)
async def rerank(body: RerankRequest, request: Request) -> Any:
    """Score each document against the query (400 ``not_supported`` if the model is not a reranker)."""
    lease = await server_state(request).registry.acquire(body.model)
    try:
        result = await asyncio.to_thread(
            lease.llama.create_rerank,
            body.query,
            body.document_texts(),
            body.top_n,
            body.with_text,
            lease.alias,
        )
    finally:
        lease.release()
    request_record(request.scope).prompt_tokens = result["usage"]["prompt_tokens"]
    return body.answer(result)
