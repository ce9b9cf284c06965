"""``POST /tokenize`` and ``POST /detokenize`` (llama-server's shapes)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.errors import ERROR_RESPONSES
from llamacpp_integrations.server.schemas import DetokenizeRequest, TokenizeRequest
from llamacpp_integrations.server.state import server_state

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["tokens"])


@router.post("/tokenize", responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    """Text -> ``{"tokens": [...]}`` (with ``with_pieces``: ``[{"id", "piece"}, ...]``)."""
    lease = await server_state(request).registry.acquire(body.model)
    try:
        llama = lease.llama
        tokens = await asyncio.to_thread(llama.tokenize, body.content, body.add_special, body.parse_special)
        if not body.with_pieces:
            return {"tokens": tokens}
        pieces = await asyncio.to_thread(
            lambda: [llama.detokenize([t], special=True).decode("utf-8", "replace") for t in tokens]
        )
        return {"tokens": [{"id": t, "piece": p} for t, p in zip(tokens, pieces, strict=True)]}
    finally:
        lease.release()


@router.post("/detokenize", responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, str]:
    """Token ids -> ``{"content": text}``."""
    lease = await server_state(request).registry.acquire(body.model)
    try:
        text = await asyncio.to_thread(lease.llama.detokenize, body.tokens)
    finally:
        lease.release()
    return {"content": text.decode("utf-8", "replace")}
