"""Reranking: (query, document) pairs laid out as llama-server lays them out, scored by the
classifier head under rank pooling, and checked against a numpy forward pass of the same weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llamacpp_native import ContextOverflowError, Llama, NotSupportedError, RerankResult
from tiny_models import reference_score, write_reranker

QUERY = "what is the capital of france?"
DOCUMENTS = [
    "paris is the capital of france",
    "cats are small animals",
    "the sky is blue",
    "dogs bark",
    "paris is a city in europe",
]
TOLERANCE = 5e-3
"""llama.cpp's CPU GELU and attention round through f16; the numpy reference is float64."""


@pytest.fixture(scope="module")
def reranker(reranker_path: Path) -> Iterator[Llama]:
    with Llama(reranker_path, n_ctx=128, n_batch=128, n_parallel=2, n_threads=1) as instance:
        yield instance


def test_scores_equal_a_numpy_forward_pass_of_the_same_weights(reranker: Llama) -> None:
    results = reranker.rerank(QUERY, DOCUMENTS)
    assert sorted(result.index for result in results) == list(range(len(DOCUMENTS)))
    for result in results:
        expected = reference_score(reranker.rerank_tokens(QUERY, DOCUMENTS[result.index]))
        assert result.relevance_score == pytest.approx(expected, abs=TOLERANCE)
        assert result.document == DOCUMENTS[result.index]
    spread = results[0].relevance_score - results[-1].relevance_score
    assert spread > 20 * TOLERANCE  # the documents' scores differ by far more than the rounding


def test_results_come_best_first_and_top_n_keeps_the_best(reranker: Llama) -> None:
    results = reranker.rerank(QUERY, DOCUMENTS)
    scores = [result.relevance_score for result in results]
    assert scores == sorted(scores, reverse=True)
    assert reranker.rerank(QUERY, DOCUMENTS, top_n=2) == results[:2]
    assert reranker.rerank(QUERY, DOCUMENTS, top_n=0) == []
    assert reranker.rerank(QUERY, DOCUMENTS, top_n=99) == results


def test_a_documents_score_does_not_depend_on_its_batch_companions(reranker: Llama) -> None:
    together = {result.index: result.relevance_score for result in reranker.rerank(QUERY, DOCUMENTS)}
    for index, document in enumerate(DOCUMENTS):
        alone = reranker.rerank(QUERY, [document])
        assert alone == [RerankResult(0, pytest.approx(together[index], abs=1e-5), document)]


def test_a_bert_pair_is_cls_query_sep_document(reranker: Llama) -> None:
    vocab = reranker.model.vocab
    assert (vocab.bos, vocab.sep, vocab.eos, vocab.add_eos, vocab.add_sep) == (2, 3, -1, False, True)
    query = reranker.tokenize(QUERY, add_bos=False)
    document = reranker.tokenize(DOCUMENTS[0], add_bos=False)
    assert reranker.rerank_tokens(QUERY, DOCUMENTS[0]) == [2, *query, 3, *document]


def test_a_rerank_template_lays_out_the_pair_and_user_text_is_not_substituted(tmp_path: Path) -> None:
    path = write_reranker(
        tmp_path / "templated.gguf", rerank_template="[CLS]{query}[SEP][SEP]{document}[SEP]"
    )
    with Llama(path, n_ctx=128, n_threads=1, n_parallel=1) as llama:
        query, document = "where does {document} live", "cats"
        expected = llama.tokenize(f"[CLS]{query}[SEP][SEP]{document}[SEP]", add_bos=False, special=True)
        assert llama.rerank_tokens(query, document) == expected
        assert expected.count(3) == 3  # the template's three [SEP]s, parsed as the special token
        (result,) = llama.rerank(query, [document])
        assert result.relevance_score == pytest.approx(reference_score(expected), abs=TOLERANCE)


def test_create_rerank_has_llama_servers_shape_with_usage(reranker: Llama) -> None:
    result = reranker.create_rerank(QUERY, DOCUMENTS, top_n=2, return_documents=True, model="tiny")
    best = reranker.rerank(QUERY, DOCUMENTS, top_n=2)
    assert result["object"] == "list" and result["model"] == "tiny"
    assert result["results"] == [
        {"index": r.index, "relevance_score": r.relevance_score, "document": {"text": r.document}}
        for r in best
    ]
    n_tokens = sum(len(reranker.rerank_tokens(QUERY, d)) for d in DOCUMENTS)
    assert result["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    assert "document" not in reranker.create_rerank(QUERY, DOCUMENTS)["results"][0]


def test_a_model_that_is_not_a_reranker_is_refused(llama: Llama) -> None:
    assert not llama.is_reranker
    with pytest.raises(NotSupportedError, match="not a reranker") as refused:
        llama.rerank(QUERY, DOCUMENTS)
    assert isinstance(refused.value, ValueError)


def test_rank_pooling_can_be_chosen_for_a_gguf_that_does_not_declare_it(tmp_path: Path) -> None:
    path = write_reranker(tmp_path / "undeclared.gguf", rank_pooling=False)
    with Llama(path, n_ctx=128, n_threads=1, n_parallel=1) as plain, pytest.raises(NotSupportedError):
        plain.rerank(QUERY, DOCUMENTS)
    with Llama(path, n_ctx=128, n_threads=1, n_parallel=1, pooling="rank") as chosen:
        (result,) = chosen.rerank(QUERY, DOCUMENTS[:1])
        expected = reference_score(chosen.rerank_tokens(QUERY, DOCUMENTS[0]))
        assert result.relevance_score == pytest.approx(expected, abs=TOLERANCE)


def test_a_pair_longer_than_the_batch_is_refused_not_truncated(reranker: Llama) -> None:
    with pytest.raises(ContextOverflowError, match="document 1"):
        reranker.rerank(QUERY, ["dogs bark", " ".join(["cats"] * 200)])


def test_bad_arguments_are_value_or_type_errors(reranker: Llama) -> None:
    with pytest.raises(ValueError, match="top_n"):
        reranker.rerank(QUERY, DOCUMENTS, top_n=-1)
    with pytest.raises(TypeError, match="list of texts"):
        reranker.rerank(QUERY, "one string")  # type: ignore[arg-type]
    assert reranker.rerank(QUERY, []) == []


def test_embedding_a_reranker_gives_its_one_score_not_a_vector(reranker: Llama) -> None:
    (vector,) = reranker.embed([DOCUMENTS[0]])
    assert len(vector) == reranker.model.n_cls_out == 1
