"""``POST /v1/embeddings``: one vector per input text, in input order, as floats or base64."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from fastapi import APIRouter, Depends, Request

from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.errors import ERROR_RESPONSES
from llamacpp_integrations.server.middleware import request_record
from llamacpp_integrations.server.schemas import EmbeddingRequest
from llamacpp_integrations.server.state import server_state

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["embeddings"])


@router.post("/embeddings", responses=ERROR_RESPONSES)
async def create_embedding(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    """Embed a text or a list of texts."""
    texts = body.texts()
    lease = await server_state(request).registry.acquire(body.model)
    try:
        result = await asyncio.to_thread(lease.llama.create_embedding, texts, lease.alias)
    finally:
        lease.release()
    request_record(request.scope).prompt_tokens = result["usage"]["prompt_tokens"]
    if body.encoding_format == "base64":
        for item in result["data"]:
            item["embedding"] = _base64_floats(item["embedding"])
    return result


def _base64_floats(vector: list[float]) -> str:
    """Little-endian float32s, base64-encoded (what OpenAI's clients decode)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
