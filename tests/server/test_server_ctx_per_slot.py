"""``--n_ctx_per_slot``: each request may hold at most that many tokens, as in llama-server, whose
``-c 512 -np 2`` gives each slot 256.  A longer prompt gets ``exceed_context_size_error`` naming the
cap as ``n_ctx``; generation stops at the cap; ``/props`` and ``/slots`` report the cap."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from server_support import RunningServer, assert_openai_error

N_CTX, N_PARALLEL, CAP = 512, 2, 256

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, " * 10
"""A prompt longer than the cap but within the whole context (about 310 tokens)."""


@pytest.fixture(scope="module")
def capped(start_server: Callable[..., RunningServer], model_path: Path) -> RunningServer:
    """A server of two slots sharing 512 tokens of KV cache, each request capped at 256."""
    flags = ["--n_ctx", str(N_CTX), "--n_parallel", str(N_PARALLEL), "--n_ctx_per_slot", str(CAP)]
    return start_server("--model", str(model_path), *flags, "--n_threads", "1")


@pytest.fixture(scope="module")
def http(capped: RunningServer) -> Iterator[httpx.Client]:
    """Plain HTTP to the capped server."""
    with httpx.Client(base_url=capped.url, timeout=120) as session:
        yield session


def _prompt_of(http: httpx.Client, n_tokens: int) -> list[int]:
    tokens = http.post("/tokenize", json={"content": COUNTING}).json()["tokens"]
    assert len(tokens) >= n_tokens
    return list(tokens[:n_tokens])


def test_a_prompt_over_the_cap_is_refused_naming_the_cap_as_n_ctx(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"prompt": _prompt_of(http, CAP + 20), "max_tokens": 4})
    error = assert_openai_error(response, 400, "context_length_exceeded")
    assert error["type"] == "exceed_context_size_error"
    assert (error["n_prompt_tokens"], error["n_ctx"]) == (CAP + 20, CAP)


def test_a_streamed_chat_over_the_cap_is_refused_before_streaming(http: httpx.Client) -> None:
    body = {"messages": [{"role": "user", "content": COUNTING}], "stream": True}
    response = http.post("/v1/chat/completions", json=body)
    error = assert_openai_error(response, 400, "context_length_exceeded")
    assert error["type"] == "exceed_context_size_error"
    assert error["n_ctx"] == CAP and CAP < error["n_prompt_tokens"] < N_CTX


def test_generation_stops_with_length_at_the_cap(http: httpx.Client) -> None:
    body = {"prompt": _prompt_of(http, CAP - 4), "max_tokens": 50, "temperature": 0}
    reply = http.post("/v1/completions", json=body).json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 4


def test_props_and_slots_report_the_cap(http: httpx.Client) -> None:
    props = http.get("/props").json()
    assert props["total_slots"] == N_PARALLEL
    assert props["default_generation_settings"]["n_ctx"] == CAP
    assert [slot["n_ctx"] for slot in http.get("/slots").json()] == [CAP, CAP]
