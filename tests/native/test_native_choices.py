"""``n`` choices, chat logprobs and token-id prompts on ``Llama``: what each returns, as a specification.

Greedy tests use a counting prompt the model is sure of; sampled tests only compare runs with
each other (same seed, same choices), never with one CPU's text.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from llamacpp_native import Llama

COUNTING = "1, 2, 3, 4, 5, 6,"
CHAT = [{"role": "user", "content": "Count from 1 to 10."}]


def _choices(result: Any) -> list[dict[str, Any]]:
    assert isinstance(result, dict)
    return result["choices"]


# -- n choices ---------------------------------------------------------------------------------
def test_n_greedy_completion_gives_n_identical_choices_indexed_in_order(llama: Llama) -> None:
    single = llama.create_completion(COUNTING, max_tokens=6, temperature=0.0)
    result = llama.create_completion(COUNTING, max_tokens=6, temperature=0.0, n=3)
    choices = _choices(result)
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert {c["text"] for c in choices} == {_choices(single)[0]["text"]}
    usage = result["usage"]  # type: ignore[index]
    assert usage["prompt_tokens"] == single["usage"]["prompt_tokens"]  # type: ignore[index]
    assert usage["completion_tokens"] == 3 * single["usage"]["completion_tokens"]  # type: ignore[index]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_n_choices_decode_the_prompt_once(llama: Llama) -> None:
    prompt = "A prompt nobody sent before, so that the prefix cache holds none of it: 7, 8, 9,"
    n_prompt = len(llama.tokenize(prompt.encode(), special=True))
    before = llama.engine.stats()["prompt_tokens_decoded"]
    llama.create_completion(prompt, max_tokens=2, temperature=0.0, n=4)
    # the first choice decodes the prompt; each other copies it and decodes its last token again,
    # for logits of its own
    assert llama.engine.stats()["prompt_tokens_decoded"] - before == n_prompt + 3


def test_n_with_a_seed_gives_reproducible_choices_that_differ(llama: Llama) -> None:
    def run() -> list[str]:
        return [
            c["text"]
            for c in _choices(llama.create_completion("Once", max_tokens=12, temperature=1.5, seed=42, n=4))
        ]

    first = run()
    assert run() == first
    assert len(set(first)) > 1  # choice i samples with seed + i


def test_n_streaming_interleaves_choices_and_ends_with_the_total_usage(llama: Llama) -> None:
    chunks = list(llama.create_completion(COUNTING, max_tokens=4, temperature=0.0, n=2, stream=True))
    indices = [c["choices"][0]["index"] for c in chunks]
    assert set(indices) == {0, 1}
    assert (
        indices.index(1) < len(indices) - indices[::-1].index(0) - 1
    )  # choice 1 starts before choice 0 ends
    texts = {
        i: "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i) for i in (0, 1)
    }
    assert all(texts.values())  # may still part at a near-tie: each choice decodes its own last prompt token
    with_usage = [c for c in chunks if "usage" in c]
    assert with_usage == [chunks[-1]]
    assert with_usage[0]["usage"]["completion_tokens"] == 8


def test_n_chat_choices_with_logprobs(llama: Llama) -> None:
    result = llama.create_chat_completion(
        CHAT, max_tokens=4, temperature=0.0, n=2, logprobs=True, top_logprobs=2
    )
    choices = _choices(result)
    assert [c["index"] for c in choices] == [0, 1]
    # The second choice copies the first's decoded prompt and decodes its last token again in
    # another batch, whose numerics may differ slightly: each is greedy, not bit-identical.
    for choice in choices:
        content = choice["logprobs"]["content"]
        assert len(content) == 4
        for item in content:
            _check_token(item, 2)
            assert item["top_logprobs"][0]["token"] == item["token"]


def test_n_async_matches_sync(llama: Llama) -> None:
    # A chat short enough that each choice decodes it (no copied prompt), so that both runs
    # decode it in the same batches: sampled tokens then depend on the seeds alone.
    short = [{"role": "user", "content": "Hi"}]

    async def run() -> Any:
        return await llama.acreate_chat_completion(short, max_tokens=6, temperature=1.0, seed=9, n=3)

    sync = llama.create_chat_completion(short, max_tokens=6, temperature=1.0, seed=9, n=3)
    assert [c["message"] for c in _choices(asyncio.run(run()))] == [c["message"] for c in _choices(sync)]


def test_n_is_bounded_by_the_parallel_slots(llama: Llama) -> None:
    with pytest.raises(ValueError, match="n_parallel"):
        llama.create_completion(COUNTING, max_tokens=2, n=5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be"):
            llama.create_chat_completion(CHAT, max_tokens=2, n=bad)
    assert _choices(llama.create_completion(COUNTING, max_tokens=2, temperature=0.0))  # still serving


def test_closing_an_n_stream_early_cancels_every_choice(llama: Llama) -> None:
    stream = llama.create_completion(COUNTING, max_tokens=200, temperature=0.0, n=3, stream=True)
    next(iter(stream))
    stream.close()  # type: ignore[union-attr]
    assert llama.engine.wait_idle(timeout=60)


# -- chat logprobs -----------------------------------------------------------------------------
def _check_token(item: dict[str, Any], top: int) -> None:
    assert item["logprob"] <= 0.0 and math.isfinite(item["logprob"])
    assert isinstance(item["bytes"], list) and all(0 <= b < 256 for b in item["bytes"])
    alternatives = item["top_logprobs"]
    assert len(alternatives) == top
    values = [a["logprob"] for a in alternatives]
    assert values == sorted(values, reverse=True) and all(v <= 0.0 for v in values)


def test_chat_logprobs_greedy_choose_the_top_token(llama: Llama) -> None:
    result = llama.create_chat_completion(CHAT, max_tokens=5, temperature=0.0, logprobs=True, top_logprobs=3)
    content = _choices(result)[0]["logprobs"]["content"]
    assert len(content) == result["usage"]["completion_tokens"]  # type: ignore[index]
    for item in content:
        _check_token(item, 3)
        assert item["top_logprobs"][0]["token"] == item["token"]
        assert item["top_logprobs"][0]["logprob"] == pytest.approx(item["logprob"])
    text = bytes(b for item in content for b in item["bytes"]).decode("utf-8", "replace")
    assert text == _choices(result)[0]["message"]["content"]


def test_chat_logprobs_streamed_agree_with_the_whole_answer(llama: Llama) -> None:
    options: dict[str, Any] = dict(max_tokens=5, temperature=0.0, logprobs=True, top_logprobs=2)
    whole = _choices(llama.create_chat_completion(CHAT, **options))[0]["logprobs"]["content"]
    streamed = [
        item
        for chunk in llama.create_chat_completion(CHAT, stream=True, **options)
        for item in (chunk["choices"][0]["logprobs"] or {"content": []})["content"]
    ]
    assert [i["token"] for i in streamed] == [i["token"] for i in whole]
    assert [i["logprob"] for i in streamed] == pytest.approx([i["logprob"] for i in whole])


def test_chat_logprobs_of_a_sampled_token_outside_the_top_list(llama: Llama) -> None:
    """The chosen token's own logprob is given even when a hot sample falls outside the top one."""
    result = llama.create_chat_completion(
        CHAT,
        max_tokens=16,
        temperature=5.0,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        seed=3,
        logprobs=True,
        top_logprobs=1,
    )
    content = _choices(result)[0]["logprobs"]["content"]
    outside = [i for i in content if i["token"] != i["top_logprobs"][0]["token"]]
    assert outside  # at this temperature some token is not the most likely one
    for item in outside:
        _check_token(item, 1)
        assert item["logprob"] < item["top_logprobs"][0]["logprob"]


def test_chat_without_logprobs_has_none(llama: Llama) -> None:
    assert _choices(llama.create_chat_completion(CHAT, max_tokens=2, temperature=0.0))[0]["logprobs"] is None
    result = llama.create_chat_completion(CHAT, max_tokens=2, temperature=0.0, logprobs=True)
    assert all(item["top_logprobs"] == [] for item in _choices(result)[0]["logprobs"]["content"])


@pytest.mark.parametrize("top", [-1, 21, 2.5])
def test_top_logprobs_out_of_range(llama: Llama, top: Any) -> None:
    with pytest.raises(ValueError, match="top_logprobs"):
        llama.create_chat_completion(CHAT, max_tokens=2, logprobs=True, top_logprobs=top)


# -- token ids ---------------------------------------------------------------------------------
def test_completion_of_token_ids_matches_the_text_prompt(llama: Llama) -> None:
    ids = llama.tokenize(COUNTING.encode(), special=True)
    by_text = _choices(llama.create_completion(COUNTING, max_tokens=4, temperature=0.0))[0]["text"]
    assert _choices(llama.create_completion(ids, max_tokens=4, temperature=0.0))[0]["text"] == by_text


def test_a_batch_of_prompts_gives_one_choice_each_in_order(llama: Llama) -> None:
    ids = llama.tokenize(COUNTING.encode(), special=True)
    alone = [
        _choices(llama.create_completion(p, max_tokens=3, temperature=0.0))[0]["text"]
        for p in ("a b c d", ids)
    ]
    result = llama.create_completion(["a b c d", ids], max_tokens=3, temperature=0.0, n=2)
    assert [(c["index"], c["text"]) for c in _choices(result)] == list(
        enumerate([alone[0]] * 2 + [alone[1]] * 2)
    )


@pytest.mark.parametrize("prompt", [[-1], [10**9], [[1], [10**9]]])
def test_token_ids_outside_the_vocabulary_are_a_value_error(llama: Llama, prompt: Any) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llama.create_completion(prompt, max_tokens=2)


def test_embedding_token_ids(llama: Llama) -> None:
    text = "a short text"
    ids = llama.tokenize(text.encode())
    by_text = llama.embed(text)
    assert llama.embed(ids) == pytest.approx(by_text, abs=1e-4)
    both = llama.embed([ids, text])
    assert len(both) == 2 and both[0] == pytest.approx(both[1], abs=1e-4)  # type: ignore[arg-type]
    response = llama.create_embedding([ids, [ids[0]]])
    assert [d["index"] for d in response["data"]] == [0, 1]
    assert response["usage"]["prompt_tokens"] == len(ids) + 1
    for bad in ([10**9], [[1], [-2]], [[]]):
        with pytest.raises(ValueError):
            llama.embed(bad)
