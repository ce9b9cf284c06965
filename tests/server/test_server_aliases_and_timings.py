"""The OpenAI routes without ``/v1`` (as llama-server serves them), llama-server's ``timings`` in
OpenAI responses, and unit-length vectors from ``/v1/embeddings``."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import httpx
import openai
import pytest
from server_support import RunningServer, sse_data

NO_END = {"ignore_eos": True}
HELLO = [{"role": "user", "content": "Hello"}]


def test_the_openai_client_works_without_v1_in_its_base_url(server: RunningServer, model_name: str) -> None:
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    assert [model.id for model in client.models.list().data] == [
        model.id for model in openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused").models.list().data
    ]
    reply = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Hello"}], max_tokens=3, extra_body=NO_END
    )
    assert reply.object == "chat.completion" and reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def _check_timings(timings: dict[str, Any], usage: dict[str, Any]) -> None:
    assert timings["predicted_n"] == usage["completion_tokens"]
    assert timings["prompt_n"] + timings["cache_n"] == usage["prompt_tokens"]
    assert timings["cache_n"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert timings["prompt_ms"] >= 0 and timings["predicted_ms"] > 0
    steps = timings["predicted_n"] - 1  # the first token comes with the prompt: no decode step of its own
    assert math.isclose(timings["predicted_per_second"], steps * 1000 / timings["predicted_ms"], rel_tol=1e-9)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "Once upon a time"}),
        ("/v1/chat/completions", {"messages": HELLO}),
    ],
    ids=["completion", "chat"],
)
def test_a_response_carries_llama_servers_timings(
    http: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    result = http.post(path, json={**body, "max_tokens": 4, **NO_END}).json()
    _check_timings(result["timings"], result["usage"])
    assert result["timings"]["predicted_n"] == 4


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "Once upon a time"}),
        ("/v1/chat/completions", {"messages": HELLO}),
    ],
    ids=["completion", "chat"],
)
def test_the_finishing_chunk_of_a_stream_carries_the_timings(
    http: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    request = {**body, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}, **NO_END}
    with http.stream("POST", path, json=request) as response:
        payloads = sse_data(list(response.iter_lines()))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    assert len(finishing) == 1
    assert all("timings" not in c for c in chunks if c["choices"] and c is not finishing[0])
    _check_timings(finishing[0]["timings"], chunks[-1]["usage"])


def test_embeddings_are_unit_vectors(http: httpx.Client, model_name: str) -> None:
    body = {"model": model_name, "input": ["a cat sat on the mat", "quantum chromodynamics"]}
    floats = http.post("/v1/embeddings", json=body).json()["data"]
    encoded = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()["data"]
    for item, packed in zip(floats, encoded, strict=True):
        assert math.isclose(math.fsum(x * x for x in item["embedding"]), 1.0, rel_tol=1e-6)
        raw = base64.b64decode(packed["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert math.isclose(math.fsum(x * x for x in decoded), 1.0, rel_tol=1e-5)


def test_the_responses_route_answers_without_v1_too(http: httpx.Client, model_name: str) -> None:
    reply = http.post("/responses", json={"model": model_name, "input": "Hi", "max_output_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert reply.json()["object"] == "response"
