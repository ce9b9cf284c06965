"""``LlamaCppEmbedding`` on the real default model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from llama_index_support import LOAD_SETTINGS

from llamacpp_integrations._runtime import shared_llama
from llamacpp_integrations.llama_index import LlamaCPP, LlamaCppEmbedding

TEXTS = [
    "The cat sat on the mat.",
    "Paris is the capital of France.",
    "Bananas are yellow.",
    "Rivers flow.",
    "Hi",
]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


def test_construction_loads_nothing_and_a_missing_model_path_fails_at_first_use() -> None:
    embedder = LlamaCppEmbedding(embed_batch_size=3)
    assert embedder.embed_batch_size == 3 and embedder.normalize
    with pytest.raises(ValueError, match="model_path"):
        embedder.get_query_embedding("hello")


def test_query_and_text_embeddings_are_unit_vectors_of_the_model_width(
    embed_model: LlamaCppEmbedding, model_path: Path
) -> None:
    query = embed_model.get_query_embedding("Where is Paris?")
    text = embed_model.get_text_embedding("Paris is the capital of France.")
    width = shared_llama(model_path, embed_model.load_settings).model.n_embd
    assert len(query) == len(text) == width
    assert norm(query) == pytest.approx(1.0) and norm(text) == pytest.approx(1.0)


def test_the_embedder_shares_the_llms_model_when_settings_match(
    embed_model: LlamaCppEmbedding, model_path: Path
) -> None:
    llm = LlamaCPP(model_path=model_path, model_kwargs=LOAD_SETTINGS)
    assert shared_llama(model_path, embed_model.load_settings) is shared_llama(model_path, llm.load_settings)


def test_batches_equal_one_text_at_a_time(model_path: Path) -> None:
    embedder = LlamaCppEmbedding(model_path=model_path, model_kwargs=LOAD_SETTINGS, embed_batch_size=2)
    batched = embedder.get_text_embedding_batch(TEXTS)
    singles = [embedder.get_text_embedding(text) for text in TEXTS]
    assert len(batched) == len(TEXTS)
    for got, expected in zip(
        batched, singles, strict=True
    ):  # equal up to batch-size-dependent float rounding
        assert cosine(got, expected) > 0.999


def test_instructions_are_prepended_verbatim(embed_model: LlamaCppEmbedding, model_path: Path) -> None:
    instructed = LlamaCppEmbedding(
        model_path=model_path,
        model_kwargs=LOAD_SETTINGS,
        query_instruction="search_query: ",
        text_instruction="search_document: ",
    )
    assert instructed.get_query_embedding("cats") == pytest.approx(
        embed_model.get_text_embedding("search_query: cats"), abs=1e-4
    )
    assert instructed.get_text_embedding("cats") == pytest.approx(
        embed_model.get_text_embedding("search_document: cats"), abs=1e-4
    )
    assert instructed.get_query_embedding("cats") != pytest.approx(
        embed_model.get_query_embedding("cats"), abs=1e-4
    )


def test_normalize_false_returns_the_pooled_vector(embed_model: LlamaCppEmbedding, model_path: Path) -> None:
    raw = LlamaCppEmbedding(model_path=model_path, model_kwargs=LOAD_SETTINGS, normalize=False)
    vector = raw.get_text_embedding("Rivers flow.")
    assert norm(vector) != pytest.approx(1.0)
    assert [x / norm(vector) for x in vector] == pytest.approx(
        embed_model.get_text_embedding("Rivers flow."), abs=1e-4
    )


async def test_async_forms_match_the_sync_ones(embed_model: LlamaCppEmbedding) -> None:
    assert await embed_model.aget_query_embedding("cats") == pytest.approx(
        embed_model.get_query_embedding("cats"), abs=1e-4
    )
    assert await embed_model.aget_text_embedding("dogs") == pytest.approx(
        embed_model.get_text_embedding("dogs"), abs=1e-4
    )
    batch = await embed_model.aget_text_embedding_batch(TEXTS[:3])
    singles = [embed_model.get_text_embedding(t) for t in TEXTS[:3]]
    # A batch is not bit-identical to single texts: where a row sits in a batch picks
    # llama.cpp's matmul kernel (cosine about 0.9999).  Each vector is still its own text's.
    for i, vector in enumerate(batch):
        similarity = [_cosine(vector, single) for single in singles]
        assert similarity[i] > 0.999 and similarity.index(max(similarity)) == i, similarity


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))
