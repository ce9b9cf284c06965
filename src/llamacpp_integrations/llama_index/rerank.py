"""``LlamaCppRerank``: a LlamaIndex node postprocessor that reorders nodes with a local reranker."""

from __future__ import annotations

import os
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from llamacpp_integrations._runtime import shared_llama
from llamacpp_native import Llama


class LlamaCppRerank(BaseNodePostprocessor):
    """Reranks retrieved nodes with a local cross-encoder GGUF (its GGUF declares rank pooling).

    Each node's ``score`` becomes the reranker's score and the ``top_n`` best are kept, best
    first.  Constructing loads nothing; the model is loaded on first use and shared with every
    integration object naming the same file and settings.  A model that is not a reranker
    raises ``NotSupportedError`` (a ``ValueError``) then.
    """

    model_path: str | None = Field(
        default=None, description="Path of a local reranker .gguf; loaded on first use, never downloaded."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Load arguments of llamacpp_native.Llama (n_ctx, n_batch, n_threads...).",
    )
    top_n: int = Field(default=2, ge=0, description="Nodes to keep, best first.")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep each node's retrieval score in metadata['retrieval_score']."
    )
    verbose: bool = Field(
        default=False,
        description="Log llama.cpp's informational lines too (Python logging; process-wide, set at load).",
    )

    _llama: Llama | None = PrivateAttr(default=None)

    @field_validator("model_path", mode="before")
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @classmethod
    def class_name(cls) -> str:
        return "LlamaCppRerank"

    @property
    def llama(self) -> Llama:
        """The ``llamacpp_native.Llama`` in use, loaded (and shared) on first access."""
        if self._llama is None or self._llama.model.closed:
            self._llama = shared_llama(self.model_path or "", {"verbose": self.verbose, **self.model_kwargs})
        return self._llama

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("reranking needs the query: pass query_bundle (or query_str)")
        if not nodes:
            return []
        texts = [node.node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model_path,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            ranked = self.llama.rerank(query_bundle.query_str, texts, top_n=self.top_n)
            kept = []
            for result in ranked:
                node = nodes[result.index]
                if self.keep_retrieval_score:
                    node.node.metadata["retrieval_score"] = node.score
                node.score = result.relevance_score
                kept.append(node)
            event.on_end(payload={EventPayload.NODES: kept})
        return kept
