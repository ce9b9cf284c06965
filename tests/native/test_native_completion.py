"""Completions: stop strings, limits, usage, echo, suffix (fill-in-the-middle), logprobs and streaming."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llamacpp_native import Llama

Complete = Callable[..., dict[str, Any]]
COUNT = "1, 2, 3, 4,"  # greedy: " 5, 6, 7" -- tokens " ", "5", ",", " ", "6", ...


def choice(result: dict[str, Any]) -> dict[str, Any]:
    return dict(result["choices"][0])


# -- stop strings ------------------------------------------------------------------------------


def test_a_stop_string_spanning_several_tokens_is_cut_with_nothing_of_it_emitted(greedy: Complete) -> None:
    result = choice(greedy(COUNT, stop=[", 6"]))
    assert result["text"] == " 5"
    assert result["finish_reason"] == "stop"


def test_streamed_chunks_never_contain_any_part_of_the_stop_string(llama: Llama) -> None:
    stream = llama.create_completion(COUNT, max_tokens=8, temperature=0.0, stop=[", 6"], stream=True)
    texts = [choice(chunk)["text"] for chunk in stream]  # type: ignore[union-attr]
    assert "".join(texts) == " 5"
    assert not any("," in text for text in texts)


def test_the_earliest_of_several_stop_strings_wins(greedy: Complete) -> None:
    assert choice(greedy(COUNT, stop=[" 7", "6,"]))["text"] == " 5, "


def test_a_single_stop_string_may_be_given_as_a_str(greedy: Complete) -> None:
    assert choice(greedy(COUNT, stop="6"))["text"] == " 5, "


def test_text_held_back_for_a_stop_string_that_never_completes_is_released(greedy: Complete) -> None:
    plain = choice(greedy(COUNT))
    near_miss = choice(greedy(COUNT, stop=["5, 6, 8"]))
    assert near_miss["text"] == plain["text"] == " 5, 6, 7"
    assert near_miss["finish_reason"] == "length"


def test_a_stop_string_at_the_very_start_gives_empty_text(greedy: Complete) -> None:
    result = choice(greedy(COUNT, stop=[" 5"]))
    assert (result["text"], result["finish_reason"]) == ("", "stop")


# -- limits and usage ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [1, 3])
def test_max_tokens_gives_length_and_exactly_that_many_tokens(greedy: Complete, max_tokens: int) -> None:
    result = greedy(COUNT, max_tokens=max_tokens)
    assert choice(result)["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == max_tokens


def test_usage_counts_prompt_tokens_with_bos_and_adds_up(llama: Llama, greedy: Complete) -> None:
    usage = greedy(COUNT, max_tokens=4)["usage"]
    assert usage["prompt_tokens"] == len(llama.tokenize(COUNT)) == 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_prompt_may_be_given_as_token_ids(llama: Llama, greedy: Complete) -> None:
    assert choice(greedy(llama.tokenize(COUNT)))["text"] == choice(greedy(COUNT))["text"]


def test_a_completion_is_openai_shaped(greedy: Complete, llama: Llama) -> None:
    result = greedy(COUNT, max_tokens=2)
    assert result["id"].startswith("cmpl-")
    assert result["object"] == "text_completion"
    assert result["model"] == llama.model_path
    assert isinstance(result["created"], int)
    assert choice(result)["index"] == 0
    assert choice(result)["logprobs"] is None


# -- echo and suffix -------------------------------------------------------------------------


def test_echo_prepends_the_prompt(greedy: Complete) -> None:
    plain = choice(greedy(COUNT))["text"]
    assert choice(greedy(COUNT, echo=True))["text"] == COUNT + plain


def test_echo_of_a_token_prompt_prepends_its_text(llama: Llama, greedy: Complete) -> None:
    plain = choice(greedy(COUNT))["text"]
    assert choice(greedy(llama.tokenize(COUNT), echo=True))["text"] == COUNT + plain


def test_a_suffix_asks_for_fill_in_the_middle_which_this_model_cannot_do(greedy: Complete) -> None:
    with pytest.raises(ValueError, match="FIM tokens"):  # tests/native/test_native_infill.py: one that can
        greedy(COUNT, suffix=" ...and so on")


# -- logprobs ------------------------------------------------------------------------------------


def test_logprobs_give_one_entry_per_token_with_the_top_alternatives(greedy: Complete) -> None:
    result = choice(greedy(COUNT, max_tokens=4, logprobs=3))
    logprobs = result["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 4
    assert "".join(logprobs["tokens"]) == result["text"]
    assert all(len(top) == 3 for top in logprobs["top_logprobs"])
    assert all(lp <= 0.0 for lp in logprobs["token_logprobs"])


def test_greedy_logprobs_pick_the_most_likely_token(greedy: Complete) -> None:
    logprobs = choice(greedy(COUNT, max_tokens=4, logprobs=2))["logprobs"]
    for token, logprob, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert max(top, key=top.get) == token
        assert logprob == pytest.approx(max(top.values()))


def test_text_offsets_are_where_each_token_starts_in_the_text(greedy: Complete) -> None:
    logprobs = choice(greedy(COUNT, max_tokens=6, logprobs=1))["logprobs"]
    starts = [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(logprobs["tokens"]))]
    assert logprobs["text_offset"] == starts


def test_text_offsets_count_the_echoed_prompt(greedy: Complete) -> None:
    logprobs = choice(greedy(COUNT, max_tokens=3, logprobs=1, echo=True))["logprobs"]
    assert logprobs["text_offset"][0] == len(COUNT)


def test_logprobs_do_not_change_the_greedy_text(greedy: Complete) -> None:
    assert choice(greedy(COUNT, logprobs=2))["text"] == choice(greedy(COUNT))["text"]


def test_logprobs_cover_exactly_the_returned_text_when_a_stop_string_cuts_it(greedy: Complete) -> None:
    result = choice(greedy(COUNT, stop=[", 6"], logprobs=1))
    assert result["text"] == " 5"
    assert "".join(result["logprobs"]["tokens"]) == " 5"
    assert result["logprobs"]["text_offset"] == [0, 1]


def test_text_offsets_stay_right_while_text_is_held_back_for_a_possible_stop(greedy: Complete) -> None:
    logprobs = choice(greedy(COUNT, stop=["5, 6, 8"], logprobs=1))["logprobs"]
    starts = [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(logprobs["tokens"]))]
    assert logprobs["text_offset"] == starts


# -- streaming ----------------------------------------------------------------------------------


def test_streamed_chunks_concatenate_to_the_non_streamed_text(llama: Llama, greedy: Complete) -> None:
    whole = choice(greedy(COUNT))["text"]
    chunks = list(llama.create_completion(COUNT, max_tokens=8, temperature=0.0, stream=True))  # type: ignore[arg-type]
    assert len(chunks) > 1
    assert "".join(choice(c)["text"] for c in chunks) == whole


def test_only_the_last_streamed_chunk_has_finish_reason_and_usage(llama: Llama) -> None:
    chunks = list(llama.create_completion(COUNT, max_tokens=4, temperature=0.0, stream=True))  # type: ignore[arg-type]
    assert [choice(c)["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert choice(chunks[-1])["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert not any("usage" in c for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1


def test_a_stream_with_echo_starts_with_the_prompt(llama: Llama) -> None:
    stream = llama.create_completion(COUNT, max_tokens=2, temperature=0.0, stream=True, echo=True)
    assert choice(next(stream))["text"] == COUNT  # type: ignore[call-overload]
