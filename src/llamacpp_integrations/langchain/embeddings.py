"""``LlamaCppEmbeddings``: text embeddings from a local GGUF model."""

from __future__ import annotations

import asyncio
import warnings

from langchain_core.embeddings import Embeddings
from pydantic import Field, model_validator
from typing_extensions import Self

from llamacpp_integrations.langchain._settings import LlamaCppLoadSettings


class LlamaCppEmbeddings(LlamaCppLoadSettings, Embeddings):
    """Embeddings from a local llama.cpp (GGUF) model.

    A drop-in replacement for ``langchain_community.embeddings.LlamaCppEmbeddings``:
    same parameters, but the model loads on first use, documents are embedded
    in batches (several sequences per decode), and the async methods run off
    the event loop.  Pooling is the model's own, or mean pooling for models
    without one (``model_kwargs={"pooling": "cls"}`` and the like choose another).

    Example:
        .. code-block:: python

            from llamacpp_integrations.langchain import LlamaCppEmbeddings

            embeddings = LlamaCppEmbeddings(model_path="/models/embedder.gguf", normalize=True)
            vectors = embeddings.embed_documents(["a cat", "a dog"])
    """

    f16_kv: bool = Field(
        default=False, description="KV cache in f16 (True) or f32 (False); see type_k/type_v."
    )
    device: str | None = Field(
        default=None, description="Accepted for compatibility and ignored; use n_gpu_layers to offload."
    )
    normalize: bool = Field(
        default=False, description="Scale every vector to unit length (for cosine similarity)."
    )

    @model_validator(mode="after")
    def _check_device(self) -> Self:
        if self.device is not None:
            warnings.warn(
                f"device={self.device!r} is ignored: llama.cpp offloads with n_gpu_layers",
                UserWarning,
                stacklevel=2,
            )
        return self

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text; texts are decoded together in batches of up to n_batch tokens."""
        if not texts:
            return []
        vectors = self.llama.embed(list(texts), normalize=self.normalize)
        return [list(map(float, v)) for v in vectors]  # type: ignore[arg-type]

    def embed_query(self, text: str) -> list[float]:
        """The vector of one text."""
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """``embed_documents`` without blocking the event loop."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """``embed_query`` without blocking the event loop."""
        return await asyncio.to_thread(self.embed_query, text)
