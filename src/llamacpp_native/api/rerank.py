"""``Llama``'s reranking: a cross-encoder scores each (query, document) pair with its classifier head.

A reranker GGUF declares rank pooling (``<arch>.pooling_type``); its pooled output is the
classifier's score.  Pairs are laid out as llama-server lays them out: the GGUF's ``rerank``
template where it has one (``{query}``, ``{document}``), else BOS, query, EOS (or SEP), SEP,
document, EOS, each special token only where the vocabulary asks for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llamacpp_native.api.embeddings import LlamaEmbeddings
from llamacpp_native.binding.context import POOLING
from llamacpp_native.errors import ContextOverflowError, NotSupportedError

_PLACEHOLDER = re.compile(r"\{query\}|\{document\}")


@dataclass(frozen=True)
class RerankResult:
    """One document's score: its ``index`` in the input, ``relevance_score`` (higher: more relevant)."""

    index: int
    relevance_score: float
    document: str


class LlamaRerank(LlamaEmbeddings):
    # -- reranking ---------------------------------------------------------------------------
    @property
    def is_reranker(self) -> bool:
        """Whether this model ranks pairs: loaded with ``pooling="rank"``, or declaring rank pooling."""
        if self._pooling is not None:
            return self._pooling == "rank"
        declared = self.model.metadata.get(f"{self.model.architecture}.pooling_type")
        return declared == str(POOLING["rank"])

    def rerank_tokens(self, query: str, document: str) -> list[int]:
        """The tokens the model reads for one (query, document) pair."""
        template = self.model.named_template("rerank")
        if template is not None:
            values = {"{query}": query, "{document}": document}
            prompt = _PLACEHOLDER.sub(lambda match: values[match.group(0)], template)
            return self.tokenize(prompt, add_bos=False, special=True)
        vocab = self.model.vocab
        end = vocab.eos if vocab.eos >= 0 else vocab.sep
        tokens = [vocab.bos] if vocab.add_bos else []
        tokens += self.tokenize(query, add_bos=False)
        tokens += [end] if vocab.add_eos else []
        tokens += [vocab.sep] if vocab.add_sep else []
        tokens += self.tokenize(document, add_bos=False)
        tokens += [end] if vocab.add_eos else []
        return tokens

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None) -> list[RerankResult]:
        """The documents scored against ``query``, most relevant first; the best ``top_n`` if given.

        Raises ``NotSupportedError`` (a ``ValueError``) when the model is not a reranker, and
        ``ContextOverflowError`` when a pair is longer than ``n_batch`` tokens.
        """
        results, _ = self._rank(query, documents)
        return _best(results, top_n)

    def create_rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None = None,
        return_documents: bool = False,
        model: str | None = None,
    ) -> dict[str, Any]:
        """llama-server's (and Jina's) rerank response: ``results`` best first, with ``usage``."""
        results, n_tokens = self._rank(query, documents)
        items = []
        for result in _best(results, top_n):
            item: dict[str, Any] = {"index": result.index, "relevance_score": result.relevance_score}
            if return_documents:
                item["document"] = {"text": result.document}
            items.append(item)
        return {
            "object": "list",
            "model": model or self.model_path,
            "results": items,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }

    def _rank(self, query: str, documents: Sequence[str]) -> tuple[list[RerankResult], int]:
        """Every document's score, in input order, and the tokens read."""
        if isinstance(documents, str):
            raise TypeError("documents must be a list of texts, not one string")
        documents = list(documents)
        if not self.is_reranker:
            raise NotSupportedError(
                f"{self.model.name} is not a reranker: reranking needs a model with a classifier head "
                "whose GGUF declares rank pooling (or pass pooling='rank' when loading one)"
            )
        if self.model.rpc_servers:  # a stopped worker: ggml would abort the process in the decode
            self.model.check_rpc_servers()
        with self._embed_lock:
            context = self._embedding_context()
            pairs = [self.rerank_tokens(query, document) for document in documents]
            for index, tokens in enumerate(pairs):
                if not tokens:
                    raise ValueError(f"document {index} and the query are both empty: nothing to score")
                if len(tokens) > context.n_batch:
                    raise ContextOverflowError(
                        f"document {index} and the query are {len(tokens)} tokens, more than the batch "
                        f"of {context.n_batch} a pair must fit in: shorten it or load the model with a "
                        "larger n_batch"
                    )
            scores = self._pooled(context, pairs)
        results = [
            RerankResult(index, float(score[0]), document)
            for index, (score, document) in enumerate(zip(scores, documents, strict=True))
        ]
        return results, sum(map(len, pairs))


def _best(results: list[RerankResult], top_n: int | None) -> list[RerankResult]:
    """``results`` most relevant first (ties in input order), cut to ``top_n``."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise ValueError(f"top_n must be a number of documents >= 0, got {top_n!r}")
    ordered = sorted(results, key=lambda result: -result.relevance_score)
    return ordered if top_n is None else ordered[:top_n]
