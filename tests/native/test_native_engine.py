"""The engine: prefix cache, parallel sequences, the context window and cancellation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from llamacpp_native import (
    Cancellation,
    Chunk,
    ContextOverflowError,
    Engine,
    GenerationCancelled,
    GenerationRequest,
    Llama,
    SamplingParams,
    Vocab,
)

GREEDY = SamplingParams(temperature=0.0)


def _no_end(vocab: Vocab) -> dict[int, float]:
    """A logit bias that bans every end-of-generation token, so a request runs to its limit."""
    return {token: float("-inf") for token in range(vocab.n_tokens) if vocab.is_eog(token)}


STEADY_PROMPTS = [
    "1, 2, 3, 4,",
    "A, B, C, D,",
    "one, two, three,",
    "2, 4, 6, 8,",
    "a b c d e f",
    "10, 20, 30,",
]
"""Prompts whose greedy continuation has no near-ties (see conftest)."""

PREFIX = "Here are a few sequences to continue. " * 8


def text_of(result: Any) -> str:
    return str(result["choices"][0]["text"])


@pytest.fixture
def engine(llama: Llama) -> Iterator[Engine]:
    """A one-slot engine on the shared model, so that slot reuse is predictable."""
    engine = Engine(llama.model, n_slots=1, n_ctx=512, n_threads=1)
    yield engine
    engine.close()


def request(vocab: Vocab, prompt: str, max_tokens: int = 6) -> GenerationRequest:
    return GenerationRequest(vocab.tokenize(prompt), GREEDY, max_tokens)


# -- prefix cache ------------------------------------------------------------------------------


def test_a_request_sharing_a_prefix_decodes_only_the_new_part(engine: Engine, vocab: Vocab) -> None:
    first, second = PREFIX + "1, 2, 3, 4,", PREFIX + "A, B, C, D,"
    shared = len(vocab.tokenize(PREFIX))
    engine.generate(request(vocab, first))
    before = engine.context.perf()["prompt_tokens"]
    engine.generate(request(vocab, second))
    decoded = engine.context.perf()["prompt_tokens"] - before
    assert 0 < decoded <= len(vocab.tokenize(second)) - shared + 1


def test_a_reused_prefix_gives_the_same_greedy_output_as_a_cold_start(engine: Engine, vocab: Vocab) -> None:
    target, other = PREFIX + "1, 2, 3, 4,", PREFIX + "A, B, C, D,"
    cold = engine.generate(request(vocab, target)).text
    engine.generate(request(vocab, other))
    warm = engine.generate(request(vocab, target)).text
    assert warm == cold == " 5, 6,"


def test_the_slot_remembers_prompt_and_generated_tokens(engine: Engine, vocab: Vocab) -> None:
    prompt = vocab.tokenize("1, 2, 3, 4,")
    result = engine.generate(GenerationRequest(prompt, GREEDY, 4))
    # The last sampled token is never decoded, so the cache holds everything before it.
    assert engine.slots[0].tokens == prompt + result.tokens[:-1]
    assert engine.context.kv_pos_max(0) == len(prompt) + len(result.tokens) - 2


def test_repeating_a_request_decodes_only_its_last_prompt_token(engine: Engine, vocab: Vocab) -> None:
    engine.generate(request(vocab, "1, 2, 3, 4,"))
    before = engine.context.perf()
    engine.generate(request(vocab, "1, 2, 3, 4,"))
    after = engine.context.perf()
    assert after["prompt_tokens"] == before["prompt_tokens"]  # the single re-decoded token counts as eval


@pytest.fixture
def two_slot_engine(llama: Llama) -> Iterator[Engine]:
    """Two slots sharing a 256-token KV cache."""
    engine = Engine(llama.model, n_slots=2, n_ctx=256, n_threads=1)
    yield engine
    engine.close()


def unrelated_prompts(vocab: Vocab) -> tuple[list[int], list[int]]:
    """Two prompts of 200 and 100 tokens without BOS, so they share no prefix at all."""
    numbers = vocab.tokenize("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, " * 9, add_special=False)[:200]
    letters = vocab.tokenize("a b c d e f g h i j k l m n o p " * 7, add_special=False)[:100]
    return numbers, letters


def test_a_request_that_does_not_fit_beside_another_slot_evicts_it(
    two_slot_engine: Engine, vocab: Vocab
) -> None:
    numbers, letters = unrelated_prompts(vocab)
    two_slot_engine.generate(GenerationRequest(numbers, GREEDY, 4))
    result = two_slot_engine.generate(GenerationRequest(letters, GREEDY, 4))
    assert result.finish_reason == "length"
    assert result.text == " e f g h"


def test_parallel_generation_evicts_other_slots_when_it_needs_room(
    two_slot_engine: Engine, vocab: Vocab
) -> None:
    numbers, letters = unrelated_prompts(vocab)
    two_slot_engine.generate(GenerationRequest(numbers, GREEDY, 4))
    (result,) = two_slot_engine.generate_many([GenerationRequest(letters, GREEDY, 4)])
    assert result.text == " e f g h"


def test_a_new_conversation_takes_a_free_slot_and_the_first_stays_cached(
    two_slot_engine: Engine, vocab: Vocab
) -> None:
    first = vocab.tokenize("Conversation about numbers: " + "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, " * 3)
    second = vocab.tokenize("Conversation about letters: " + "a b c d e f g h i j k l m n o p " * 3)
    two_slot_engine.generate(GenerationRequest(first, GREEDY, 2))
    two_slot_engine.generate(GenerationRequest(second, GREEDY, 2))
    before = two_slot_engine.context.perf()["prompt_tokens"]
    two_slot_engine.generate(GenerationRequest(first, GREEDY, 2))
    assert two_slot_engine.context.perf()["prompt_tokens"] - before <= 1


# -- parallel sequences -----------------------------------------------------------------------


def test_parallel_completions_equal_one_by_one_greedy_completions(llama: Llama) -> None:
    prompts = STEADY_PROMPTS[:4]
    parallel = [r.text for r in llama.create_completions(prompts, max_tokens=6, temperature=0.0)]
    one_by_one = [text_of(llama.create_completion(p, max_tokens=6, temperature=0.0)) for p in prompts]
    assert parallel == one_by_one


def test_more_prompts_than_slots_run_in_rounds_and_keep_their_order(llama: Llama) -> None:
    results = llama.create_completions(STEADY_PROMPTS, max_tokens=3, temperature=0.0)
    assert len(STEADY_PROMPTS) > len(llama.engine.slots)
    assert [r.prompt_tokens for r in results] == [len(llama.tokenize(p)) for p in STEADY_PROMPTS]
    assert results[0].text == " 5,"
    assert results[-1].text == " 40"


def test_parallel_results_report_finish_reason_and_token_counts(llama: Llama) -> None:
    first, second = llama.create_completions(
        ["1, 2, 3, 4,", "a b c d e f"], max_tokens=5, temperature=0.0, stop=[", 6"]
    )
    assert (first.text, first.finish_reason) == (" 5", "stop")
    assert (second.finish_reason, second.completion_tokens, len(second.tokens)) == ("length", 5, 5)


def test_parallel_completions_return_logprobs_when_asked(llama: Llama) -> None:
    (result,) = llama.create_completions(["1, 2, 3, 4,"], max_tokens=3, temperature=0.0, logprobs=2)
    assert result.logprobs is not None
    assert [item.token for item in result.logprobs] == result.tokens


def test_parallel_chunks_are_reported_per_prompt(llama: Llama) -> None:
    received: dict[int, list[Chunk]] = {0: [], 1: []}
    results = llama.create_completions(
        ["1, 2, 3, 4,", "A, B, C, D,"],
        max_tokens=4,
        temperature=0.0,
        on_chunk=lambda i, chunk: received[i].append(chunk),
    )
    for i, result in enumerate(results):
        assert "".join(c.text for c in received[i]) == result.text
        assert received[i][-1].finish_reason == "length"


def test_requests_submitted_together_decode_in_lockstep(two_slot_engine: Engine, vocab: Vocab) -> None:
    prompt = vocab.tokenize("I believe the meaning of life is")
    endless = SamplingParams(temperature=0.0, logit_bias=_no_end(vocab))  # both run all 40 steps
    streams = two_slot_engine.submit_many([GenerationRequest(prompt, endless, 40) for _ in range(2)])
    generated = [sum(len(chunk.tokens) for chunk in stream) for stream in streams]
    stats = two_slot_engine.stats()
    assert stats["decoded_sequences"] == 2 * stats["decode_calls"]  # every decode carried both
    assert generated == [40, 40]


def test_submit_many_queues_nothing_if_one_request_is_invalid(two_slot_engine: Engine, vocab: Vocab) -> None:
    good = GenerationRequest(vocab.tokenize("1, 2, 3, 4,"), GREEDY, 4)
    with pytest.raises(ValueError, match="the prompt is empty"):
        two_slot_engine.submit_many([good, GenerationRequest([], GREEDY, 4)])
    assert two_slot_engine.idle
    assert two_slot_engine.stats()["decode_calls"] == 0


# -- the context window ---------------------------------------------------------------------------


def test_a_prompt_longer_than_the_context_is_an_overflow_naming_both_numbers(llama: Llama) -> None:
    prompt = "word " * 2100
    n_tokens = len(llama.tokenize(prompt))
    with pytest.raises(ContextOverflowError, match=rf"{n_tokens} tokens .* {llama.n_ctx} tokens"):
        llama.create_completion(prompt, max_tokens=4)


def test_an_overflowing_prompt_among_parallel_prompts_fails_before_any_decoding(llama: Llama) -> None:
    before = llama.engine.context.perf()
    with pytest.raises(ContextOverflowError):
        llama.create_completions(["1, 2, 3, 4,", "word " * 2100], max_tokens=4)
    assert llama.engine.context.perf()["prompt_tokens"] == before["prompt_tokens"]


def test_generation_stops_with_length_where_the_window_ends(small_llama: Llama) -> None:
    n_ctx = small_llama.n_ctx
    prompt = small_llama.tokenize("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, " * 20)[: n_ctx - 3]
    result = small_llama.create_completion(prompt, max_tokens=50, temperature=0.0)
    assert result["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    assert result["usage"]["completion_tokens"] == 3  # type: ignore[index]


def test_a_prompt_exactly_filling_the_window_generates_nothing(small_llama: Llama) -> None:
    prompt = small_llama.tokenize("a b c d e f g " * 60)[: small_llama.n_ctx]
    result = small_llama.create_completion(prompt, max_tokens=5, temperature=0.0)
    assert result["choices"][0]["text"] == ""  # type: ignore[index]
    assert result["choices"][0]["finish_reason"] == "length"  # type: ignore[index]


# -- cancellation ----------------------------------------------------------------------------------


def test_closing_a_stream_early_stops_it_and_the_next_call_answers_correctly(llama: Llama) -> None:
    reference = text_of(llama.create_completion("a b c d e f", max_tokens=6, temperature=0.0))
    stream = llama.create_completion("1, 2, 3, 4,", max_tokens=100, temperature=0.0, stream=True)
    next(stream)  # type: ignore[call-overload]
    next(stream)  # type: ignore[call-overload]
    stream.close()  # type: ignore[union-attr]
    assert text_of(llama.create_completion("a b c d e f", max_tokens=6, temperature=0.0)) == reference


def test_cancel_from_another_thread_stops_generation_with_generation_cancelled(llama: Llama) -> None:
    cancellation = Cancellation()
    first_chunk = threading.Event()
    outcome: dict[str, Any] = {"chunks": 0}

    def generate() -> None:
        try:
            for _ in llama.create_completion(
                "Once upon a time", max_tokens=500, temperature=0.0, stream=True, cancellation=cancellation
            ):
                outcome["chunks"] += 1
                first_chunk.set()
        except GenerationCancelled as error:
            outcome["error"] = error
        finally:
            first_chunk.set()

    worker = threading.Thread(target=generate)
    worker.start()
    assert first_chunk.wait(120)
    cancellation.cancel()
    worker.join(120)
    assert isinstance(outcome.get("error"), GenerationCancelled)
    assert outcome["chunks"] < 500
    assert cancellation.cancelled
    assert text_of(llama.create_completion("1, 2, 3, 4,", max_tokens=4, temperature=0.0)) == " 5, "


def test_cancelling_while_streaming_stops_at_the_next_token(llama: Llama) -> None:
    reference = text_of(llama.create_completion("A, B, C, D,", max_tokens=4, temperature=0.0))
    cancellation = Cancellation()
    stream = llama.create_completion(
        "1, 2, 3, 4,", max_tokens=50, temperature=0.0, stream=True, cancellation=cancellation
    )
    next(stream)  # type: ignore[call-overload]
    cancellation.cancel()
    with pytest.raises(GenerationCancelled, match="cancelled"):
        next(stream)  # type: ignore[call-overload]
    assert text_of(llama.create_completion("A, B, C, D,", max_tokens=4, temperature=0.0)) == reference


def test_a_request_cancelled_before_it_starts_generates_nothing(llama: Llama) -> None:
    cancellation = Cancellation()
    cancellation.cancel()
    with pytest.raises(GenerationCancelled):
        llama.create_completion("1, 2, 3, 4,", max_tokens=4, cancellation=cancellation)


def test_cancelling_parallel_generation_stops_every_sequence(llama: Llama) -> None:
    reference = [r.text for r in llama.create_completions(STEADY_PROMPTS[:2], max_tokens=3, temperature=0.0)]
    cancellation = Cancellation()
    requests = [llama.completion_request(p, max_tokens=50, temperature=0.0) for p in STEADY_PROMPTS[:3]]
    with pytest.raises(GenerationCancelled):
        llama.engine.generate_many(
            requests, on_chunk=lambda i, chunk: cancellation.cancel(), cancellation=cancellation
        )
    assert [
        r.text for r in llama.create_completions(STEADY_PROMPTS[:2], max_tokens=3, temperature=0.0)
    ] == reference


# -- request validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_tokens": []}, "the prompt is empty"),
        ({"prompt_tokens": [2, 3], "max_tokens": -1}, "max_tokens must be >= 0"),
        ({"prompt_tokens": [2, 3], "logprobs": -2}, "logprobs must be between 0"),
    ],
)
def test_invalid_requests_are_value_errors(engine: Engine, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine.generate(GenerationRequest(**kwargs))


def test_every_generated_token_id_reaches_a_chunk_even_when_its_text_was_held_back(llama: Llama) -> None:
    # "ab" could start the stop string "abz", so its text waits for the next token each time
    request = llama.completion_request(
        "Letters:",
        max_tokens=16,
        stop=["abz"],
        grammar='root ::= ("ab" "c ")+',
        logit_bias=_no_end(llama.model.vocab),
    )
    chunks = list(llama.engine.stream(request))
    ids = [token for chunk in chunks for token in chunk.tokens]
    assert len(ids) == chunks[-1].completion_tokens == 16
    assert llama.detokenize(ids).decode().startswith("abc abc")
