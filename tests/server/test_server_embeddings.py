"""``POST /v1/embeddings``: one vector per text, in input order, as floats or base64."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
from server_support import RunningServer, assert_openai_error

N_EMBD = 640
"""Gemma 3 270M's embedding width."""


def test_a_string_gets_one_vector(client: openai.OpenAI, model_name: str) -> None:
    result = client.embeddings.create(model=model_name, input="A cat sat on the mat.")
    assert len(result.data) == 1 and result.data[0].index == 0
    assert len(result.data[0].embedding) == N_EMBD
    assert result.usage.prompt_tokens > 0


def test_a_list_gets_vectors_in_input_order(http: httpx.Client, model_name: str) -> None:
    texts = ["first text", "a different second text", "first text"]
    data = http.post("/v1/embeddings", json={"model": model_name, "input": texts}).json()["data"]
    assert [item["index"] for item in data] == [0, 1, 2]
    # the same text twice: the same vector (batched numerics may differ in the last digits)
    assert _distance(data[0]["embedding"], data[2]["embedding"]) < 1e-3
    assert _distance(data[0]["embedding"], data[1]["embedding"]) > 0.1


def test_base64_encodes_the_same_float32_vectors(http: httpx.Client, model_name: str) -> None:
    body = {"model": model_name, "input": ["hello there"]}
    floats = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    encoded = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()["data"][0][
        "embedding"
    ]
    raw = base64.b64decode(encoded)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == N_EMBD
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(decoded, floats, strict=True))


def _distance(a: list[float], b: list[float]) -> float:
    """Cosine distance."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return 1 - dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_pooling_none_is_refused_on_v1_embeddings_as_llama_server_refuses_it(
    start_server: Callable[..., RunningServer], model_path: Path
) -> None:
    server = start_server("--model", str(model_path), "--n_ctx", "512", "--pooling", "none")
    try:
        refused = httpx.post(f"{server.url}/v1/embeddings", json={"input": "hello hello"}, timeout=60)
        assert_openai_error(refused, 400, "not_supported")
        native = httpx.post(f"{server.url}/embedding", json={"content": "hello hello"}, timeout=60)
        assert native.status_code == 200, native.text  # llama-server's own route still answers
    finally:
        server.stop()
