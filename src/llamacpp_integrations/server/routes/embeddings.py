"""``POST /v1/embeddings``: a unit vector per input (text or token ids), in input order, as floats or base64.

OpenAI and llama-server return vectors of length 1, so cosine similarity is a dot product.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from typing import Any

from fastapi import APIRouter, Depends, Request

from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.errors import ERROR_RESPONSES, APIError
from llamacpp_integrations.server.middleware import request_record
from llamacpp_integrations.server.schemas import EmbeddingRequest
from llamacpp_integrations.server.state import server_state

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["embeddings"])


@router.post("/v1/embeddings", responses=ERROR_RESPONSES)
async def create_embedding(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    """Embed a text or token ids, or a list of texts or of token-id lists."""
    texts = body.texts()
    lease = await server_state(request).registry.acquire(body.model)
    try:
        if lease.entry.settings.pooling == "none":  # no pooled vector per input, as OpenAI's shape needs
            raise APIError(
                400,
                "This model is served with --pooling none: /v1/embeddings needs pooled vectors "
                "(serve it with --pooling mean, cls or last, or use llama-server's /embedding)",
                code="not_supported",
            )
        result = await asyncio.to_thread(lease.llama.create_embedding, texts, lease.alias)
    finally:
        lease.release()
    request_record(request.scope).prompt_tokens = result["usage"]["prompt_tokens"]
    for item in result["data"]:
        vector = _unit(item["embedding"])
        item["embedding"] = _base64_floats(vector) if body.encoding_format == "base64" else vector
    return result


def _unit(vector: list[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays zero)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def _base64_floats(vector: list[float]) -> str:
    """Little-endian float32s, base64-encoded (what OpenAI's clients decode)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
