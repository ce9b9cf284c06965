"""Speculative decoding: guesses verified in one decode, and output exactly as without them.

The prompts ask the model to copy a text it was just shown, a continuation it is sure of (no
near-ties that another batch size's numerics could flip), and each reply is cut at the copied
length.  ``PromptLookupDecoding`` guesses from the prompt; ``DraftModel`` uses the default
model as its own draft, so its guesses are right nearly always.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamacpp_native import DraftModel, Llama, LlamaGrammar, LlamaPromptLookupDecoding, PromptLookupDecoding
from llamacpp_native.engine.speculative import NgramIndex

CODE = (
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n"
    "def mul(a, b):\n    return a * b\n"
)
COPY = f"Repeat this code exactly:\n{CODE}\nHere it is again:\n"
LENGTH = 30  # tokens of the copy compared: well within the copied text


def settings() -> dict[str, Any]:
    return {"n_ctx": 1024, "n_parallel": 2, "n_threads": 1, "seed": 1234}


@pytest.fixture(scope="module")
def lookup(model_path: Path) -> Iterator[Llama]:
    with Llama(model_path, draft_model=PromptLookupDecoding(), **settings()) as instance:
        yield instance


@pytest.fixture(scope="module")
def plain(model_path: Path) -> Iterator[Llama]:
    with Llama(model_path, **settings()) as instance:
        yield instance


def complete(llm: Llama, prompt: str = COPY, **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"max_tokens": LENGTH, "temperature": 0.0, **kwargs}
    result = llm.create_completion(prompt, **options)
    assert isinstance(result, dict)
    return result


def test_lookup_proposes_what_followed_the_tails_last_earlier_occurrence() -> None:
    index = NgramIndex(PromptLookupDecoding(max_ngram_size=3, num_pred_tokens=4, min_ngram_size=2))
    tokens = [1, 2, 3, 4, 5, 6, 9, 2, 3, 7, 8, 2]
    assert index.draft(tokens, 3, 4) == [7, 8, 2]  # "2 3" last came before 7 8 2, not 4 5 6
    assert index.draft([*tokens, 3, 7], 8, 2) == [2, 3]  # "3 7 8" matches the longer n-gram
    assert index.draft([*tokens, 3, 7, 8, 2, 3], 99, 4) == []  # nothing ends in 99


def test_prompt_lookup_gives_the_plain_greedy_output_with_guesses_kept(lookup: Llama, plain: Llama) -> None:
    fast, slow = complete(lookup), complete(plain)
    assert fast["choices"][0]["text"] == slow["choices"][0]["text"]
    assert fast["usage"]["completion_tokens"] == slow["usage"]["completion_tokens"] == LENGTH
    details = fast["usage"]["completion_tokens_details"]
    assert details["accepted_prediction_tokens"] > LENGTH // 3  # the copy is guessed from the prompt
    assert details["rejected_prediction_tokens"] >= 0
    assert "completion_tokens_details" not in slow["usage"]
    stats = lookup.engine.stats()
    assert stats["draft_tokens_accepted"] >= details["accepted_prediction_tokens"]
    assert stats["draft_tokens"] >= stats["draft_tokens_accepted"]


def test_seeded_sampling_draws_the_same_reply(lookup: Llama, plain: Llama) -> None:
    options = {"temperature": 0.7, "seed": 42, "max_tokens": 24}
    fast, slow = complete(lookup, **options), complete(plain, **options)
    assert fast["choices"][0]["text"] == slow["choices"][0]["text"]


def test_streaming_stop_strings_and_limits_hold(lookup: Llama, plain: Llama) -> None:
    chunks = lookup.create_completion(COPY, max_tokens=LENGTH, temperature=0.0, stream=True)
    assert "".join(c["choices"][0]["text"] for c in chunks) == complete(plain)["choices"][0]["text"]
    stopped = complete(lookup, stop=["sub"], max_tokens=60)
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["text"] == complete(plain, stop=["sub"], max_tokens=60)["choices"][0]["text"]
    for limit in (1, 2, 7):
        cut = complete(lookup, max_tokens=limit)
        assert cut["usage"]["completion_tokens"] == limit
        assert cut["choices"][0]["finish_reason"] == "length"


def test_a_grammar_constrains_every_kept_guess(lookup: Llama, plain: Llama) -> None:
    schema = {"type": "object", "properties": {"name": {"enum": ["add", "sub", "mul"]}}, "required": ["name"]}
    prompt = f"{CODE}\nAs JSON, the first function's name: "
    grammar = LlamaGrammar.from_json_schema(json.dumps(schema))
    fast = complete(lookup, prompt, grammar=grammar, max_tokens=40)
    slow = complete(plain, prompt, grammar=grammar, max_tokens=40)
    assert json.loads(fast["choices"][0]["text"])["name"] in ("add", "sub", "mul")
    assert fast["choices"][0]["text"] == slow["choices"][0]["text"]


def test_requests_in_one_batch_each_keep_their_own_output(lookup: Llama, plain: Llama) -> None:
    prompts = [COPY, COPY.replace("add", "plus").replace("sub", "minus")]
    fast = lookup.create_completions(prompts, max_tokens=LENGTH, temperature=0.0)
    slow = plain.create_completions(prompts, max_tokens=LENGTH, temperature=0.0)
    assert [r.text for r in fast] == [r.text for r in slow]
    assert all(r.draft_accepted > 0 for r in fast)
    assert all(r.draft_tokens == 0 for r in slow)


def test_logprobs_requests_run_without_guesses(lookup: Llama) -> None:
    result = complete(lookup, logprobs=2, max_tokens=5)
    assert len(result["choices"][0]["logprobs"]["tokens"]) == 5
    assert "completion_tokens_details" not in result["usage"]


def test_a_draft_model_gives_the_plain_greedy_output(model_path: Path, plain: Llama) -> None:
    with Llama(model_path, draft_model=DraftModel(model_path, num_pred_tokens=4), **settings()) as drafted:
        result = complete(drafted)
        assert result["choices"][0]["text"] == complete(plain)["choices"][0]["text"]
        # the draft is the model itself: its greedy guesses are the model's own
        assert result["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > LENGTH // 2


def test_a_draft_model_with_another_tokenizer_is_refused(model_path: Path, reranker_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        Llama(model_path, draft_model=str(reranker_path), **settings())


def test_bad_speculation_settings_are_clear_errors(model_path: Path) -> None:
    with pytest.raises(ValueError, match="num_pred_tokens"):
        PromptLookupDecoding(num_pred_tokens=0)
    with pytest.raises(ValueError, match="num_pred_tokens"):
        DraftModel(model_path, num_pred_tokens=65)
    with pytest.raises(ValueError, match="min_ngram_size"):
        PromptLookupDecoding(max_ngram_size=2, min_ngram_size=3)
    with pytest.raises(TypeError, match="draft_model"):
        Llama(model_path, draft_model=42, **settings())


def test_llama_cpp_pythons_name_is_the_lookup_drafter() -> None:
    assert LlamaPromptLookupDecoding(num_pred_tokens=5) == PromptLookupDecoding(num_pred_tokens=5)
