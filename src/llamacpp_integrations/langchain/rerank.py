"""``LlamaCppRerank``: a LangChain document compressor that reorders documents with a local reranker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import Field

from llamacpp_integrations.langchain._settings import LlamaCppLoadSettings


class LlamaCppRerank(LlamaCppLoadSettings, BaseDocumentCompressor):
    """Reranks documents with a local cross-encoder GGUF (a reranker: its GGUF declares rank pooling).

    Returns the ``top_n`` most relevant documents, best first, each a copy carrying its score
    in ``metadata["relevance_score"]``.  The model loads on first use; a model that is not a
    reranker raises ``NotSupportedError`` (a ``ValueError``) then.

    Example:
        .. code-block:: python

            from langchain_classic.retrievers import ContextualCompressionRetriever
            from llamacpp_integrations.langchain import LlamaCppRerank

            reranker = LlamaCppRerank(model_path="/models/bge-reranker-v2-m3.gguf", top_n=3)
            retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=...)
    """

    top_n: int | None = Field(default=3, ge=0, description="Documents to keep (None: all, reordered).")
    verbose: bool = Field(default=False, description="Log llama.cpp's informational output (Python logging).")

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The best ``top_n`` documents for ``query``, most relevant first, scores in their metadata."""
        if not documents:
            return []
        ranked = self.llama.rerank(query, [doc.page_content for doc in documents], top_n=self.top_n)
        return [
            Document(
                page_content=documents[result.index].page_content,
                metadata={**documents[result.index].metadata, "relevance_score": result.relevance_score},
                id=documents[result.index].id,
            )
            for result in ranked
        ]

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """``compress_documents`` without blocking the event loop."""
        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)
