"""Probabilities after sampling (``GenerationRequest.post_sampling_probs``, llama-server's
``post_sampling_probs``): what the sampler chain left of the model's distribution, renormalised.

Truncation (top-k, a grammar) leaves fewer candidates than asked for, whose probabilities then
sum to 1; greedy decoding leaves one, of probability 1; with nothing truncated they are the
model's own probabilities.
"""

from __future__ import annotations

import math

import pytest

from llamacpp_native import Llama, TokenLogprob

PROMPT = "Today was the day. Today I would finally become a"


def _probs(
    llama: Llama, prompt: str = PROMPT, n: int = 10, post: bool = True, **options: object
) -> list[TokenLogprob]:
    options.setdefault("seed", 11)
    request = llama.completion_request(prompt, max_tokens=4, logprobs=n, **options)  # type: ignore[arg-type]
    request.post_sampling_probs = post
    found: list[TokenLogprob] = []
    for chunk in llama.engine.stream(request):
        found.extend(chunk.logprobs or [])
    assert len(found) == 4
    return found


def _as_probs(item: TokenLogprob) -> list[float]:
    return [math.exp(value) for _, value in item.top]


def test_top_k_leaves_at_most_k_candidates_whose_probabilities_sum_to_one(llama: Llama) -> None:
    for item in _probs(llama, temperature=1.0, top_k=5, top_p=1.0, min_p=0.0):
        probs = _as_probs(item)
        assert 1 <= len(probs) <= 5
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert probs == sorted(probs, reverse=True) and all(p > 0 for p in probs)
        assert item.token in item.top_ids  # the chosen token survived the chain
        assert math.exp(item.logprob) == pytest.approx(probs[item.top_ids.index(item.token)])


def test_greedy_decoding_leaves_the_chosen_token_alone_with_probability_one(llama: Llama) -> None:
    for item in _probs(llama, temperature=0.0):
        assert item.top_ids == [item.token]
        assert item.logprob == 0.0 and item.top[0][1] == 0.0


def test_with_nothing_truncated_they_are_the_models_probabilities(llama: Llama) -> None:
    options = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 5}
    after = _probs(llama, **options)[0]  # the first token: both runs see the same logits there
    before = _probs(llama, post=False, **options)[0]
    assert after.token == before.token
    assert after.top_ids == before.top_ids
    assert _as_probs(after) == pytest.approx(_as_probs(before), abs=1e-4)


def test_a_grammar_leaves_only_the_tokens_it_admits(llama: Llama) -> None:
    grammar = 'root ::= ("yes" | "no") " " [a-z]+ "."'
    first = _probs(llama, prompt="Answer yes or no: is the sky blue?", grammar=grammar, temperature=1.0)[0]
    assert sum(_as_probs(first)) == pytest.approx(1.0, abs=1e-4)
    for piece in first.top_pieces:
        text = piece.decode("utf-8", "replace")
        assert text and ("yes".startswith(text) or "no".startswith(text)), text
