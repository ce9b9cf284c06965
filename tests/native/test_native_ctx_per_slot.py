"""``n_ctx_per_slot``: a cap on the tokens one request may hold, while the slots share one KV cache.

llama-server gives each of its ``-np`` slots ``n_ctx / n_parallel`` tokens; ``Llama(...,
n_ctx_per_slot=N)`` gives the same limit: a longer prompt is a context overflow naming the cap,
generation stops at the cap with "length", and ``n_ctx`` reports the cap.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llamacpp_native import ContextOverflowError, Llama

CAP = 128


@pytest.fixture(scope="module")
def capped(model_path: Path) -> Iterator[Llama]:
    """512 tokens of KV cache for two slots, each request capped at ``CAP`` tokens."""
    with Llama(model_path, n_ctx=512, n_parallel=2, n_ctx_per_slot=CAP, n_threads=1, seed=7) as instance:
        yield instance


def test_n_ctx_reports_the_cap_while_the_kv_cache_keeps_the_whole_context(capped: Llama) -> None:
    assert capped.n_ctx == CAP
    assert capped.engine.context.n_ctx == 512


def test_a_prompt_over_the_cap_but_within_the_context_is_an_overflow_naming_the_cap(capped: Llama) -> None:
    prompt = capped.tokenize("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, " * 20)[: CAP + 10]
    with pytest.raises(ContextOverflowError, match=rf"{CAP + 10} tokens .* {CAP} tokens.*n_ctx_per_slot"):
        capped.create_completion(prompt, max_tokens=4)


def test_generation_stops_with_length_at_the_cap(capped: Llama) -> None:
    prompt = capped.tokenize("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, " * 20)[: CAP - 3]
    result = capped.create_completion(prompt, max_tokens=50, temperature=0.0)
    assert result["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    assert result["usage"]["completion_tokens"] == 3  # type: ignore[index]


def test_each_parallel_request_gets_the_cap_of_its_own(capped: Llama) -> None:
    tokens = capped.tokenize("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, " * 20)
    results = capped.create_completions(
        [tokens[: CAP - 5], tokens[: CAP - 2]], max_tokens=50, temperature=0.0
    )
    assert [len(r.tokens) for r in results] == [5, 2]
    assert {r.finish_reason for r in results} == {"length"}


def test_a_cap_over_the_context_leaves_the_whole_context_to_each_request(model_path: Path) -> None:
    with Llama(model_path, n_ctx=256, n_parallel=1, n_ctx_per_slot=4096, n_threads=1) as llama:
        assert llama.n_ctx == 256


@pytest.mark.parametrize("cap", [0, -5])
def test_a_cap_of_no_tokens_is_refused(model_path: Path, cap: int) -> None:
    with pytest.raises(ValueError, match="n_ctx_per_slot must be a positive number"):
        Llama(model_path, n_ctx=256, n_parallel=1, n_ctx_per_slot=cap, n_threads=1)
