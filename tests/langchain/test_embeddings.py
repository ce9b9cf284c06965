"""LlamaCppEmbeddings on the real default model."""

from __future__ import annotations

import math
from typing import Any

import pytest

from llamacpp_integrations.langchain import LlamaCppEmbeddings

TEXTS = ["A cat sat on the mat.", "Stock markets fell sharply today.", "", "A kitten slept on the rug."]


@pytest.fixture
def embeddings(lc_params: dict[str, Any]) -> LlamaCppEmbeddings:
    keep = ("model_path", "n_ctx", "n_threads", "verbose")
    return LlamaCppEmbeddings(**{k: v for k, v in lc_params.items() if k in keep})


def test_community_parameters_are_accepted() -> None:
    embeddings = LlamaCppEmbeddings(
        model_path="/nowhere/model.gguf",
        n_ctx=512,
        n_parts=-1,
        seed=-1,
        f16_kv=False,
        logits_all=False,
        vocab_only=False,
        use_mlock=False,
        n_threads=None,
        n_batch=512,
        n_gpu_layers=None,
        verbose=True,
    )
    assert embeddings._llama is None  # nothing loads until the first text is embedded


def test_device_is_accepted_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="device"):
        LlamaCppEmbeddings(model_path="/nowhere/model.gguf", device="cuda")


def test_embed_documents_gives_one_vector_per_text(embeddings: LlamaCppEmbeddings) -> None:
    vectors = embeddings.embed_documents(TEXTS)
    assert len(vectors) == len(TEXTS)
    assert {len(v) for v in vectors} == {embeddings.llama.model.n_embd}
    assert embeddings.embed_documents([]) == []


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_batched_vectors_match_one_at_a_time(embeddings: LlamaCppEmbeddings) -> None:
    together = embeddings.embed_documents(TEXTS[:2])
    alone = [embeddings.embed_query(text) for text in TEXTS[:2]]
    for a, b in zip(together, alone, strict=True):
        assert _cosine(a, b) > 0.999  # the same up to the rounding of batched matrix products


def test_similar_texts_are_closer(lc_params: dict[str, Any]) -> None:
    embeddings = LlamaCppEmbeddings(
        model_path=lc_params["model_path"], n_threads=1, verbose=False, normalize=True
    )
    cat, stocks, _, kitten = embeddings.embed_documents(TEXTS)
    assert math.isclose(sum(x * x for x in cat), 1.0, rel_tol=1e-4)  # normalize=True: unit vectors
    assert _cosine(cat, kitten) > _cosine(cat, stocks)


async def test_async_forms_match_sync(embeddings: LlamaCppEmbeddings) -> None:
    assert _cosine(await embeddings.aembed_query(TEXTS[0]), embeddings.embed_query(TEXTS[0])) > 0.999
    assert len(await embeddings.aembed_documents(TEXTS)) == len(TEXTS)
