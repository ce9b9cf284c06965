"""``Llama``'s embeddings: texts batched into a pooled embedding context of their own."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeAlias, cast

from llamacpp_native.api import openai_shapes
from llamacpp_native.api.base import LlamaBase
from llamacpp_native.binding._library import capture_log
from llamacpp_native.binding.context import Context
from llamacpp_native.errors import ContextOverflowError

EmbeddingInput: TypeAlias = str | Sequence[int] | Sequence[str | Sequence[int]]
"""What ``embed`` takes: a text, token ids, or a list of texts and token-id lists."""


class LlamaEmbeddings(LlamaBase):
    # -- embeddings --------------------------------------------------------------------------
    def _embedding_context(self) -> Context:
        if self._embedder is None:
            pooling = self._pooling or ("unspecified" if self._model_pooling() else "mean")
            kwargs = dict(self._context_kwargs)
            kwargs["n_ubatch"] = kwargs["n_batch"]
            with capture_log() as context_log:
                self._embedder = Context(
                    self.model, embeddings=True, pooling=pooling, n_seq_max=self._n_parallel, **kwargs
                )
            self._context_logs.append(context_log)
        return self._embedder

    def _model_pooling(self) -> bool:
        return f"{self.model.architecture}.pooling_type" in self.model.metadata

    def embed(
        self, input: EmbeddingInput, normalize: bool = False, truncate: bool = True
    ) -> list[float] | list[list[float]]:
        """Embed a text or token-id list (-> one vector) or many (-> a vector each); ``n_embd`` floats each.

        Token ids are embedded as given (no BOS added); an id outside the vocabulary is a ``ValueError``.
        """
        if _is_one(input):
            return self._embed_texts([input], normalize, truncate)[0][0]  # type: ignore[list-item]
        return self._embed_texts(list(input), normalize, truncate)[0]  # type: ignore[arg-type]

    def _embedding_tokens(self, item: str | Sequence[int]) -> list[int]:
        if isinstance(item, str):
            return self.tokenize(item, add_bos=True) or [self.model.vocab.bos]
        if isinstance(item, bytes) or not all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            raise TypeError(f"an embedding input is a text or a list of token ids, got {item!r:.80}")
        tokens = list(item)
        if not tokens:
            raise ValueError("an embedding input of token ids holds none")
        self.model.vocab.check_tokens(tokens)
        return tokens

    def _embed_texts(
        self, texts: list[str | Sequence[int]], normalize: bool, truncate: bool
    ) -> tuple[list[list[float]], int]:
        if self.model.rpc_servers:  # a stopped worker: ggml would abort the process in the decode
            self.model.check_rpc_servers()
        with self._embed_lock:
            context = self._embedding_context()
            limit = context.n_batch
            token_lists = []
            for text in texts:
                tokens = self._embedding_tokens(text)
                if len(tokens) > limit:
                    if not truncate:
                        raise ContextOverflowError(
                            f"a text of {len(tokens)} tokens exceeds the embedding batch of {limit} tokens"
                        )
                    tokens = tokens[:limit]
                token_lists.append(tokens)
            vectors = self._pooled(context, token_lists)
            if normalize:
                vectors = [_unit(v) for v in vectors]
            return vectors, sum(map(len, token_lists))

    @classmethod
    def _pooled(cls, context: Context, token_lists: list[list[int]]) -> list[list[float]]:
        """Each token list's pooled output, several sequences per decode (each fits ``n_batch``)."""
        limit = context.n_batch
        vectors: list[list[float]] = []
        group: list[list[int]] = []
        for tokens in token_lists + [[]]:
            full = sum(map(len, group)) + len(tokens) > limit or len(group) == context.n_seq_max
            if group and (not tokens or full):
                vectors.extend(cls._embed_group(context, group))
                group = []
            if tokens:
                group.append(tokens)
        return vectors

    @staticmethod
    def _embed_group(context: Context, group: list[list[int]]) -> list[list[float]]:
        with context.gate:  # one call for close(): it waits for the whole group, or it fails first
            context.kv_clear()
            indices = context.decode_many(
                [(tokens, 0, seq) for seq, tokens in enumerate(group)], all_outputs=True
            )
            vectors = [context.embedding(seq, index) for seq, index in enumerate(indices)]
            context.kv_clear()
        return vectors

    def create_embedding(self, input: EmbeddingInput, model: str | None = None) -> dict[str, Any]:
        """OpenAI-shaped embeddings response (``input`` as ``embed`` takes it)."""
        texts = cast("list[str | Sequence[int]]", [input] if _is_one(input) else list(input))
        vectors, n_tokens = self._embed_texts(texts, False, True)
        return openai_shapes.embedding_response(model or self.model_path, vectors, n_tokens)


def _is_one(input: EmbeddingInput) -> bool:
    """Whether ``input`` is one text or one list of token ids (not a list of them)."""
    return isinstance(input, str) or (bool(input) and all(isinstance(t, int) for t in input))


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector
