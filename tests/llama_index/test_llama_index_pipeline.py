"""A LlamaIndex RAG pipeline built only from our LLM and embedding model (nothing remote)."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex

from llamacpp_integrations.llama_index import LlamaCPP, LlamaCppEmbedding

DOCUMENTS = [
    "The cat sat on the mat in the kitchen.",
    "Paris is the capital of France.",
    "Bananas are a yellow fruit.",
    "The Rhine flows through Basel.",
]


@pytest.fixture(scope="module")
def index(embed_model: LlamaCppEmbedding) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(
        [Document(text=text) for text in DOCUMENTS], embed_model=embed_model
    )


def test_the_index_holds_our_embeddings(index: VectorStoreIndex, embed_model: LlamaCppEmbedding) -> None:
    vectors = index.vector_store.data.embedding_dict  # type: ignore[attr-defined]
    assert len(vectors) == len(DOCUMENTS)
    assert {len(v) for v in vectors.values()} == {len(embed_model.get_query_embedding("x"))}


def test_query_engine_answers_with_source_nodes(index: VectorStoreIndex, llm: LlamaCPP) -> None:
    response = index.as_query_engine(llm=llm, similarity_top_k=2).query("What is the capital of France?")
    assert isinstance(response.response, str)
    assert len(response.source_nodes) == 2
    assert all(node.node.get_content() in DOCUMENTS for node in response.source_nodes)


def test_streaming_query_streams_the_answer(index: VectorStoreIndex, llm: LlamaCPP) -> None:
    response = index.as_query_engine(llm=llm, similarity_top_k=2, streaming=True).query(
        "What colour are bananas?"
    )
    tokens = list(response.response_gen)
    assert tokens and all(isinstance(token, str) for token in tokens)
    assert len(response.source_nodes) == 2
