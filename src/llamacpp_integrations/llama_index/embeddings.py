"""``LlamaCppEmbedding``: a local GGUF model as a LlamaIndex embedding model."""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator, model_validator

from llamacpp_integrations._runtime import shared_llama
from llamacpp_native import Llama


class LlamaCppEmbedding(BaseEmbedding):
    """Embeddings from a local GGUF model through llama.cpp.

    Constructing loads nothing; the model is loaded on first use and shared with
    every integration object naming the same file and load settings (an LLM and
    its embedder can share one model).  Pooling is the model's own (mean for
    models that declare none) unless ``pooling`` says otherwise.
    """

    model_path: str | None = Field(
        default=None, description="Path of a local .gguf file; loaded on first use, never downloaded."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Load arguments of llamacpp_native.Llama (n_ctx, n_batch, n_threads...).",
    )
    pooling: str | None = Field(
        default=None, description="Pooling override (mean, cls, last, ...); None uses the model's own."
    )
    normalize: bool = Field(default=True, description="Scale every vector to unit length.")
    query_instruction: str | None = Field(
        default=None, description="Prefix prepended verbatim to queries (e.g. 'search_query: ')."
    )
    text_instruction: str | None = Field(
        default=None, description="Prefix prepended verbatim to documents (e.g. 'search_document: ')."
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

    @model_validator(mode="after")
    def _name_after_model(self) -> LlamaCppEmbedding:
        if self.model_name == "unknown" and self.model_path:
            self.model_name = self.model_path
        return self

    @classmethod
    def class_name(cls) -> str:
        return "LlamaCppEmbedding"

    @property
    def load_settings(self) -> dict[str, Any]:
        """The ``Llama`` constructor arguments this embedder loads its model with."""
        settings: dict[str, Any] = {"verbose": self.verbose, **self.model_kwargs}
        if self.pooling is not None:
            settings["pooling"] = self.pooling
        return settings

    def _embed(self, texts: list[str], instruction: str | None) -> list[Embedding]:
        """The one embedding path: prefix, embed as one batch, normalize."""
        if self._llama is None:
            self._llama = shared_llama(self.model_path or "", self.load_settings)
        inputs = [f"{instruction}{text}" for text in texts] if instruction else texts
        return cast(list[Embedding], self._llama.embed(inputs, normalize=self.normalize))

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query], self.query_instruction)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text], self.text_instruction)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts, self.text_instruction)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await asyncio.to_thread(self._embed, [query], self.query_instruction))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aget_text_embeddings([text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._embed, texts, self.text_instruction)


__all__ = ["LlamaCppEmbedding"]
