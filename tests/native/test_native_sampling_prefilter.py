"""Sampling from the highest logits only (``SamplerChain.prefilter``) picks what the whole vocabulary picks.

The shim then builds candidates for a few dozen tokens instead of the whole vocabulary (262,144 on
the default model).  Each case samples the same logits many times with two chains of the same
settings and seed, one restricted and one not: every token must agree.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llamacpp_native import Context, GrammarSpec, Llama, SamplerChain, SamplingParams, Vocab, ffi, lib
from llamacpp_native.binding.sampling import ReasoningBudget, prefilter


@pytest.fixture(scope="module")
def context(llama: Llama, vocab: Vocab) -> Iterator[Context]:
    with Context(llama.model, n_ctx=64, n_threads=1) as context:
        context.decode(vocab.tokenize("Once upon a time"))
        yield context


def likeliest(context: Context, vocab: Vocab, n: int) -> list[int]:
    """The ``n`` likeliest next tokens."""
    ids, values = ffi.new("llama_token[]", n), ffi.new("float[]", n)
    lib.lcpp_logprobs(context.handle, -1, vocab.n_tokens, -1, n, ids, values)
    return list(ids)


def test_the_prefilter_covers_every_token_a_stage_may_move() -> None:
    assert prefilter(SamplingParams(temperature=0.0)) == 1
    assert prefilter(SamplingParams(temperature=0.8, top_k=40)) == 40
    assert prefilter(SamplingParams(temperature=0.8, top_k=40, logit_bias={1: -100.0, 2: -1.0})) == 42
    assert prefilter(SamplingParams(temperature=0.0, repeat_penalty=1.1, penalty_last_n=64)) == 65
    # the whole vocabulary: no top-k, a logit that may rise, a token that may be forced
    assert prefilter(SamplingParams(temperature=0.8, top_k=0)) == 0
    assert prefilter(SamplingParams(temperature=0.8, logit_bias={1: 5.0})) == 0
    assert prefilter(SamplingParams(temperature=0.8, presence_penalty=-0.5)) == 0
    assert prefilter(SamplingParams(temperature=0.8, repeat_penalty=0.9)) == 0
    assert prefilter(SamplingParams(temperature=0.8, repeat_penalty=1.1, penalty_last_n=-1)) == 0
    budget = ReasoningBudget("<think>", "</think>", 8)
    assert prefilter(SamplingParams(temperature=0.8, reasoning=budget)) == 0


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.0},
        {"temperature": 1.0, "top_k": 40, "seed": 7},
        {"temperature": 1.5, "top_k": 5, "top_p": 0.9, "min_p": 0.01, "seed": 3},
        {"temperature": 0.0, "repeat_penalty": 1.5, "penalty_last_n": 16},
        {"temperature": 1.0, "top_k": 20, "frequency_penalty": 0.5, "presence_penalty": 0.5, "seed": 5},
        {"temperature": 1.0, "top_k": 8, "seed": 11, "lowered": 6},  # pushes the six likeliest out
        {"temperature": 0.0, "grammar": 1},  # the grammar rejects most first choices here
        {"temperature": 1.0, "top_k": 40, "seed": 13, "grammar": 1},
    ],
)
def test_the_highest_logits_give_the_tokens_the_whole_vocabulary_gives(
    context: Context, vocab: Vocab, settings: dict[str, float]
) -> None:
    options = dict(settings)
    lowered = int(options.pop("lowered", 0))
    if options.pop("grammar", 0):
        options["grammar"] = GrammarSpec('root ::= ("yes" | "no" | " maybe" | [0-9])+')  # type: ignore[assignment]
    if lowered:
        options["logit_bias"] = {token: -8.0 for token in likeliest(context, vocab, lowered)}  # type: ignore[assignment]
    params = SamplingParams(**options)  # type: ignore[arg-type]
    with SamplerChain(vocab, params) as fast, SamplerChain(vocab, params) as whole:
        whole.prefilter = 0
        assert fast.prefilter > 0
        picked = [fast.sample(context) for _ in range(300)]
        assert picked == [whole.sample(context) for _ in range(300)]
    if params.temperature > 0 and params.grammar is None:
        assert len(set(picked)) > 1  # a real sample, not one forced token
