"""Sampling: greedy is deterministic, a seed makes random sampling repeatable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llamacpp_native import Context, Llama, SamplerChain, SamplingParams, Vocab

Complete = Callable[..., dict[str, Any]]


def text(result: Any) -> str:
    return str(result["choices"][0]["text"])


def test_greedy_generation_gives_the_same_text_twice(greedy: Complete) -> None:
    first = text(greedy("a b c d e f"))
    assert first == text(greedy("a b c d e f"))
    assert first.startswith(" g h i")


def test_greedy_ignores_the_seed(greedy: Complete) -> None:
    assert text(greedy("1, 2, 3, 4,", seed=1)) == text(greedy("1, 2, 3, 4,", seed=2))


def test_the_same_seed_repeats_a_random_sample(llama: Llama) -> None:
    def sample(seed: int) -> str:
        result = llama.create_completion("Once upon a time", max_tokens=8, temperature=1.0, seed=seed)
        return text(result)

    assert sample(42) == sample(42)


def test_other_seeds_give_other_samples(llama: Llama) -> None:
    def sample(seed: int) -> str:
        result = llama.create_completion("Once upon a time", max_tokens=8, temperature=1.0, seed=seed)
        return text(result)

    reference = sample(42)
    assert any(sample(seed) != reference for seed in (43, 44, 45))


def test_a_strong_logit_bias_forces_a_token(llama: Llama, vocab: Vocab) -> None:
    forced = vocab.tokenize(" banana", add_special=False)
    assert len(forced) == 1
    result = llama.create_completion(
        "1, 2, 3, 4,", max_tokens=3, temperature=0.0, logit_bias={forced[0]: 100.0}
    )
    assert text(result) == " banana" * 3


def test_a_sampler_chain_samples_from_a_context(llama: Llama, vocab: Vocab) -> None:
    with (
        Context(llama.model, n_ctx=64, n_threads=1) as context,
        SamplerChain(vocab, SamplingParams(temperature=0.0)) as chain,
    ):
        context.decode(vocab.tokenize("a b c d e f"))
        assert vocab.detokenize([chain.sample(context)]) == " g"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (SamplingParams(top_k=-1), "top_k must be >= 0"),
        (SamplingParams(top_p=1.5), r"top_p must be in \[0, 1\]"),
        (SamplingParams(min_p=-0.1), r"min_p must be in \[0, 1\]"),
        (SamplingParams(repeat_penalty=0.0), "repeat_penalty must be > 0"),
        (SamplingParams(penalty_last_n=-2), "penalty_last_n must be >= -1"),
        (SamplingParams(logit_bias={300000: 1.0}), "outside the vocabulary"),
    ],
)
def test_invalid_sampling_settings_are_value_errors(
    vocab: Vocab, params: SamplingParams, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SamplerChain(vocab, params)
