"""Sampling one sequence together with its token's probabilities: the model's, or the sampler chain's.

The decode loop samples most sequences in one native call; a request that asks for
logprobs is sampled here, on its own, so that the probabilities can be read around it.
"""

from __future__ import annotations

import math

from llamacpp_native.binding._library import ffi, lib
from llamacpp_native.binding.context import Context
from llamacpp_native.binding.sampling import SamplerChain
from llamacpp_native.binding.vocab import Vocab
from llamacpp_native.engine.types import TokenLogprob


def sample_with_logprobs(
    context: Context, vocab: Vocab, sampler: SamplerChain, top_n: int, index: int
) -> tuple[int, TokenLogprob]:
    """Sample at output ``index``; the token's log-probability under the model, and the ``top_n`` best."""
    handle, n_vocab = context.handle, vocab.n_tokens
    ids = ffi.new("llama_token[]", max(top_n, 1))
    values = ffi.new("float[]", max(top_n, 1))
    lib.lcpp_logprobs(handle, index, n_vocab, -1, top_n, ids, values)  # read before sampling
    token = sampler.sample(context, index)
    own = lib.lcpp_logprobs(handle, index, n_vocab, token, 0, ffi.NULL, ffi.NULL)
    return token, _token_logprob(vocab, token, float(own), list(ids[0:top_n]), list(values[0:top_n]))


def sample_after_sampling(
    context: Context, vocab: Vocab, sampler: SamplerChain, top_n: int, index: int
) -> tuple[int, TokenLogprob]:
    """Sample at output ``index``; log-probabilities after the sampler chain (``post_sampling_probs``):
    the token's, and up to ``top_n`` of the candidates the chain kept."""
    token = sampler.sample(context, index)
    ids = ffi.new("llama_token[]", max(top_n, 1))
    values = ffi.new("float[]", max(top_n, 1))
    count = ffi.new("int32_t *")
    own = lib.lcpp_sampled_probs(token, top_n, ids, values, count)
    n = count[0]
    return token, _token_logprob(vocab, token, _log(own), list(ids[0:n]), [_log(p) for p in values[0:n]])


def _token_logprob(
    vocab: Vocab, token: int, logprob: float, top_ids: list[int], top: list[float]
) -> TokenLogprob:
    pieces = [vocab.token_to_piece(t) for t in top_ids]
    texts = [(piece.decode("utf-8", "replace"), value) for piece, value in zip(pieces, top, strict=True)]
    piece = vocab.token_to_piece(token)
    return TokenLogprob(token, piece.decode("utf-8", "replace"), logprob, texts, piece, pieces, top_ids)


def _log(probability: float) -> float:
    return math.log(probability) if probability > 0 else -math.inf
