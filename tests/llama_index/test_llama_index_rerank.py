"""``LlamaCppRerank``: LlamaIndex's node postprocessor over the tiny reranker."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from llamacpp_integrations.llama_index import LlamaCppRerank
from llamacpp_native import Llama, NotSupportedError

QUERY = "what is the capital of france?"
TEXTS = ["cats are small animals", "paris is the capital of france", "dogs bark", "the sky is blue"]


def nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(text=text, id_=f"n{i}"), score=0.5) for i, text in enumerate(TEXTS)]


def test_it_is_a_node_postprocessor_that_loads_nothing_when_built() -> None:
    reranker = LlamaCppRerank(model_path="/nowhere/reranker.gguf", top_n=3)
    assert isinstance(reranker, BaseNodePostprocessor)
    assert reranker.class_name() == "LlamaCppRerank"


def test_the_best_nodes_come_first_scored_by_the_reranker(reranker_path: Path) -> None:
    reranker = LlamaCppRerank(
        model_path=reranker_path, model_kwargs={"n_threads": 1}, top_n=2, keep_retrieval_score=True
    )
    kept = reranker.postprocess_nodes(nodes(), query_str=QUERY)
    with Llama(reranker_path, n_threads=1, n_parallel=1) as llama:
        expected = llama.rerank(QUERY, TEXTS, top_n=2)
    assert [node.node.node_id for node in kept] == [f"n{result.index}" for result in expected]
    assert [node.score for node in kept] == pytest.approx(
        [result.relevance_score for result in expected], abs=1e-5
    )
    assert all(node.node.metadata["retrieval_score"] == 0.5 for node in kept)


def test_reranking_needs_the_query(reranker_path: Path) -> None:
    reranker = LlamaCppRerank(model_path=reranker_path, model_kwargs={"n_threads": 1})
    with pytest.raises(ValueError, match="query"):
        reranker.postprocess_nodes(nodes())
    assert reranker.postprocess_nodes([], query_bundle=QueryBundle(QUERY)) == []


def test_a_model_that_is_not_a_reranker_is_refused(model_path: Path) -> None:
    reranker = LlamaCppRerank(model_path=model_path, model_kwargs={"n_threads": 1, "n_ctx": 512})
    with pytest.raises(NotSupportedError, match="not a reranker"):
        reranker.postprocess_nodes(nodes(), query_str=QUERY)
