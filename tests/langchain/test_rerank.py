"""``LlamaCppRerank``: LangChain's document compressor over the tiny reranker."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.documents import BaseDocumentCompressor, Document

from llamacpp_integrations.langchain import LlamaCppRerank
from llamacpp_native import Llama, NotSupportedError

QUERY = "what is the capital of france?"
TEXTS = ["cats are small animals", "paris is the capital of france", "dogs bark", "the sky is blue"]


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    return [
        Document(page_content=text, metadata={"source": i}, id=f"doc-{i}") for i, text in enumerate(TEXTS)
    ]


def test_it_is_a_document_compressor_that_loads_nothing_when_built() -> None:
    reranker = LlamaCppRerank(model_path="/nowhere/reranker.gguf")
    assert isinstance(reranker, BaseDocumentCompressor)
    assert reranker.top_n == 3


def test_the_best_documents_come_first_with_their_scores(
    reranker_path: Path, documents: list[Document]
) -> None:
    reranker = LlamaCppRerank(model_path=str(reranker_path), n_threads=1, top_n=2)
    kept = reranker.compress_documents(documents, QUERY)
    with Llama(reranker_path, n_threads=1, n_parallel=1) as llama:
        expected = llama.rerank(QUERY, TEXTS, top_n=2)
    assert [doc.page_content for doc in kept] == [result.document for result in expected]
    for doc, result in zip(kept, expected, strict=True):
        # the same score up to the float rounding of another batch's composition
        assert doc.metadata == {
            "source": result.index,
            "relevance_score": pytest.approx(result.relevance_score, abs=1e-5),
        }
        assert doc.id == f"doc-{result.index}"
    assert documents[0].metadata == {"source": 0}  # the inputs are left as they were


async def test_the_async_path_gives_the_same_documents(
    reranker_path: Path, documents: list[Document]
) -> None:
    reranker = LlamaCppRerank(model_path=str(reranker_path), n_threads=1, top_n=None)
    assert await reranker.acompress_documents(documents, QUERY) == reranker.compress_documents(
        documents, QUERY
    )
    assert reranker.compress_documents([], QUERY) == []


def test_a_model_that_is_not_a_reranker_is_refused(model_path: Path, documents: list[Document]) -> None:
    reranker = LlamaCppRerank(model_path=str(model_path), n_threads=1, n_ctx=512)
    with pytest.raises(NotSupportedError, match="not a reranker"):
        reranker.compress_documents(documents, QUERY)
