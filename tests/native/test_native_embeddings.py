"""Embeddings: one n_embd vector per text, optionally unit length, batch = one by one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llamacpp_native import Llama

TEXTS = [
    "The cat sat on the mat.",
    "Quantum chromodynamics describes the strong force.",
    "Bonjour tout le monde",
]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_an_embedding_has_n_embd_dimensions(llama: Llama) -> None:
    vector = llama.embed("hello world")
    assert len(vector) == llama.model.n_embd == 640
    assert all(isinstance(x, float) and math.isfinite(x) for x in vector)


def test_normalize_gives_unit_length(llama: Llama) -> None:
    vector = llama.embed("hello world", normalize=True)
    assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-6)  # type: ignore[arg-type]


def test_a_batch_gives_one_vector_per_text_in_order(llama: Llama) -> None:
    batch = llama.embed(TEXTS)
    alone = [llama.embed(text) for text in TEXTS]
    assert len(batch) == len(TEXTS)
    for i, vector in enumerate(batch):
        assert len(vector) == 640  # type: ignore[arg-type]
        similarities = [cosine(vector, other) for other in alone]  # type: ignore[arg-type]
        assert similarities[i] > 0.99
        assert similarities.index(max(similarities)) == i


def test_a_batch_larger_than_the_slots_still_gives_one_vector_per_text(llama: Llama) -> None:
    texts = [f"sentence number {i}" for i in range(9)]
    vectors = llama.embed(texts)
    assert len(vectors) == 9
    assert len({tuple(v) for v in vectors}) == 9  # type: ignore[arg-type]


def test_embedding_the_same_text_twice_gives_the_same_vector(llama: Llama) -> None:
    assert llama.embed("repeatable") == llama.embed("repeatable")


def test_related_texts_are_closer_than_unrelated_ones(llama: Llama) -> None:
    cat, kitten, tax = llama.embed(["a small cat", "a little kitten", "quarterly tax returns"])
    assert cosine(cat, kitten) > cosine(cat, tax)  # type: ignore[arg-type]


def test_create_embedding_is_openai_shaped_with_usage(llama: Llama) -> None:
    response = llama.create_embedding(["one", "two words"])
    assert response["object"] == "list"
    assert [item["index"] for item in response["data"]] == [0, 1]
    assert all(item["object"] == "embedding" and len(item["embedding"]) == 640 for item in response["data"])
    n_tokens = len(llama.tokenize("one")) + len(llama.tokenize("two words"))
    assert response["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}


def test_an_empty_text_still_embeds(llama: Llama) -> None:
    assert len(llama.embed("")) == 640


def test_without_pooling_each_text_of_a_batch_gets_its_own_last_token_vector(model_path: Path) -> None:
    with Llama(model_path, n_ctx=128, n_parallel=2, n_threads=1, embedding=True, pooling="none") as instance:
        first, second = instance.embed(TEXTS[:2])
        alone = [instance.embed(text) for text in TEXTS[:2]]
    assert first != second
    assert cosine(first, alone[0]) > cosine(first, alone[1])  # type: ignore[arg-type]
