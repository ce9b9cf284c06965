"""``/v1/rerank`` (and its llama-server aliases) and ``/infill`` on the tiny reranker and FIM models,
and both refused with a 400 that says why on the default model, which can do neither."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import RunningServer, assert_openai_error, sse_data

from llamacpp_native import Llama
from tiny_models import reference_score

QUERY = "what is the capital of france?"
DOCUMENTS = ["cats are small animals", "paris is the capital of france", "dogs bark", "the sky is blue"]
GAP = {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n\nprint(add(1, 2))\n"}
EXTRA = [{"filename": "util.py", "text": "x = 1"}]
GREEDY = {"temperature": 0.0, "n_predict": 6}


@pytest.fixture(scope="module")
def tiny(tiny_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.url, timeout=120) as session:
        yield session


@pytest.fixture(scope="module")
def local_reranker(reranker_path: Path) -> Iterator[Llama]:
    """The reranker in this process, for the pairs' tokens."""
    with Llama(reranker_path, n_ctx=128, n_threads=1, n_parallel=1) as llama:
        yield llama


@pytest.fixture(scope="module")
def local_coder(fim_model: tuple[Path, dict[str, int]]) -> Iterator[Llama]:
    """The FIM model in this process, with the server's batch and context, for the expected prompt."""
    with Llama(fim_model[0], n_ctx=512, n_batch=64, n_threads=1, n_parallel=1) as llama:
        yield llama


# -- rerank ---------------------------------------------------------------------------------------


def test_rerank_scores_the_documents_best_first_as_the_forward_pass_does(
    tiny: httpx.Client, local_reranker: Llama
) -> None:
    response = tiny.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "reranker"
    results = body["results"]
    assert sorted(item["index"] for item in results) == [0, 1, 2, 3]
    scores = [item["relevance_score"] for item in results]
    assert scores == sorted(scores, reverse=True)
    pairs = [local_reranker.rerank_tokens(QUERY, document) for document in DOCUMENTS]
    for item in results:
        assert item["relevance_score"] == pytest.approx(reference_score(pairs[item["index"]]), abs=5e-3)
        assert "document" not in item
    n_tokens = sum(map(len, pairs))
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}


@pytest.mark.parametrize("path", ["/rerank", "/v1/reranking", "/reranking"])
def test_llama_servers_aliases_answer_alike(tiny: httpx.Client, path: str) -> None:
    request = {"query": QUERY, "documents": DOCUMENTS, "top_n": 2}
    assert tiny.post(path, json=request).json() == tiny.post("/v1/rerank", json=request).json()


def test_a_classifier_served_with_rank_pooling_reranks_as_one_that_declares_it(tiny: httpx.Client) -> None:
    request = {"query": QUERY, "documents": DOCUMENTS}
    declared = tiny.post("/v1/rerank", json=request).json()["results"]
    chosen = tiny.post("/v1/rerank", json={**request, "model": "classifier"}).json()["results"]
    assert [item["index"] for item in chosen] == [item["index"] for item in declared]
    for ours, theirs in zip(chosen, declared, strict=True):
        assert ours["relevance_score"] == pytest.approx(theirs["relevance_score"], abs=1e-5)


def test_top_n_and_return_documents(tiny: httpx.Client) -> None:
    everything = tiny.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()["results"]
    request = {
        "query": QUERY,
        "documents": [{"text": d} for d in DOCUMENTS],
        "top_n": 2,
        "return_documents": True,
    }
    best = tiny.post("/v1/rerank", json=request).json()["results"]
    assert [item["index"] for item in best] == [item["index"] for item in everything[:2]]
    assert [item["document"] for item in best] == [{"text": DOCUMENTS[item["index"]]} for item in best]


def test_texts_get_teis_bare_list(tiny: httpx.Client) -> None:
    jina = tiny.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()["results"]
    tei = tiny.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()
    assert tei == [
        {"index": item["index"], "score": item["relevance_score"], "text": DOCUMENTS[item["index"]]}
        for item in jina
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"documents": DOCUMENTS}, "query"),
        ({"query": QUERY}, None),
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": DOCUMENTS, "texts": DOCUMENTS}, None),
        ({"query": QUERY, "documents": "one string"}, "documents"),
        ({"query": QUERY, "documents": [1, 2]}, "documents.0"),
        ({"query": QUERY, "documents": DOCUMENTS, "top_n": -1}, "top_n"),
        ({"query": 7, "documents": DOCUMENTS}, "query"),
    ],
)
def test_bad_rerank_requests_are_400s_naming_the_field(
    tiny: httpx.Client, body: dict[str, Any], param: str | None
) -> None:
    error = assert_openai_error(tiny.post("/v1/rerank", json=body), 400)
    assert error["param"] == param


def test_a_pair_over_the_batch_is_a_400(tiny: httpx.Client) -> None:
    response = tiny.post("/v1/rerank", json={"query": QUERY, "documents": ["cats " * 100]})
    assert_openai_error(response, 400, "context_length_exceeded")


def test_rerank_on_a_model_that_is_not_a_reranker_is_a_400_that_says_so(http: httpx.Client) -> None:
    response = http.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    error = assert_openai_error(response, 400, "not_supported")
    assert "not a reranker" in error["message"]


# -- infill ---------------------------------------------------------------------------------------


def test_infill_completes_the_prompt_built_from_the_fim_tokens(
    tiny: httpx.Client, local_coder: Llama
) -> None:
    request = {"model": "coder", **GAP, "input_extra": EXTRA, "prompt": "return", **GREEDY}
    response = tiny.post("/infill", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = local_coder.infill_tokens(
        GAP["input_prefix"], GAP["input_suffix"], prompt="return", extra=EXTRA, fit=True, max_tokens=6
    )
    assert body["tokens_evaluated"] == len(expected)
    assert body["prompt"] == local_coder.detokenize(expected, special=True).decode()
    direct = tiny.post("/completion", json={"model": "coder", "prompt": expected, **GREEDY}).json()
    assert body["content"] == direct["content"] and body["stop"] is True


def test_infill_streams_like_completion(tiny: httpx.Client) -> None:
    request = {"model": "coder", **GAP, **GREEDY}
    whole = tiny.post("/infill", json=request).json()
    with tiny.stream("POST", "/infill", json={**request, "stream": True}) as response:
        assert response.status_code == 200
        events = [json.loads(data) for data in sse_data(list(response.iter_lines()))]
    assert events[-1]["stop"] is True and all(event["stop"] is False for event in events[:-1])
    assert "".join(event["content"] for event in events) == whole["content"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input_suffix": "b"}, "input_prefix"),
        ({"input_prefix": "a"}, "input_suffix"),
        ({**GAP, "prompt": 3}, "prompt"),
        ({**GAP, "input_extra": {"text": "x"}}, "input_extra"),
        ({**GAP, "input_extra": [{"filename": "x.py"}]}, "input_extra.0.text"),
        ({**GAP, "input_extra": [{"text": "x", "filename": 1}]}, "input_extra.0.filename"),
        ({**GAP, "n_predict": -2}, "n_predict"),
    ],
)
def test_bad_infill_requests_are_400s_naming_the_field(
    tiny: httpx.Client, body: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(tiny.post("/infill", json={"model": "coder", **body}), 400)
    assert error["param"] == param


def test_infill_on_a_model_without_fim_tokens_is_a_400_that_says_so(http: httpx.Client) -> None:
    error = assert_openai_error(http.post("/infill", json=GAP), 400, "not_supported")
    assert "FIM tokens" in error["message"] and "prefix, suffix, middle" in error["message"]
