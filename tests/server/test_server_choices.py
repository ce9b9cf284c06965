"""``n`` choices, chat logprobs and token-id prompts over HTTP, read with the ``openai`` client where it can.

The main test server has 8 slots.  Greedy replies are compared with each other, never with a
CPU's text; logprob values are only checked for what holds anywhere (<= 0, sorted, the greedy token
on top).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from server_support import assert_openai_error, sse_data

CHAT = [{"role": "user", "content": "Count from 1 to 10."}]
COUNTING = "1, 2, 3, 4, 5, 6,"


def _stream(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        payloads = sse_data(list(response.iter_lines()))
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


# -- logprobs ----------------------------------------------------------------------------------
def test_chat_logprobs_parse_with_the_openai_client(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(
        model=model_name,
        messages=CHAT,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,  # type: ignore[arg-type]
    )
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert result.usage is not None and len(logprobs.content) == result.usage.completion_tokens
    for item in logprobs.content:
        assert item.logprob <= 0 and item.bytes is not None
        values = [top.logprob for top in item.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert item.top_logprobs[0].token == item.token  # greedy: the chosen token is the likeliest


def test_streamed_chat_logprobs_agree_with_the_whole_answer(http: httpx.Client, model_name: str) -> None:
    body = {"model": model_name, "messages": CHAT, "max_tokens": 5, "temperature": 0, "logprobs": True}
    body["top_logprobs"] = 2
    whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
    chunks = _stream(http, "/v1/chat/completions", body)
    streamed = [i for c in chunks for i in (c["choices"][0]["logprobs"] or {"content": []})["content"]]
    assert [i["token"] for i in streamed] == [i["token"] for i in whole]
    assert [i["logprob"] for i in streamed] == pytest.approx([i["logprob"] for i in whole])


def test_no_logprobs_unless_asked(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(model=model_name, messages=CHAT, max_tokens=2)  # type: ignore[arg-type]
    assert result.choices[0].logprobs is None


@pytest.mark.parametrize("top", [-1, 21, 2.5])
def test_top_logprobs_out_of_range_is_400(http: httpx.Client, model_name: str, top: Any) -> None:
    body = {"model": model_name, "messages": CHAT, "max_tokens": 2, "logprobs": True, "top_logprobs": top}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == "top_logprobs"


# -- n choices ---------------------------------------------------------------------------------
def test_chat_n_greedy_gives_identical_choices_and_counts_the_prompt_once(
    client: openai.OpenAI, model_name: str
) -> None:
    # the output is forced, so that batching three sequences cannot flip a near-tie on some CPU
    forced = {"grammar": 'root ::= "The model is a"'}
    one = client.chat.completions.create(
        model=model_name,
        messages=CHAT,
        max_tokens=8,
        temperature=0,
        extra_body=forced,  # type: ignore[arg-type]
    )
    many = client.chat.completions.create(
        model=model_name,
        messages=CHAT,
        max_tokens=8,
        temperature=0,
        n=3,
        extra_body=forced,  # type: ignore[arg-type]
    )
    assert one.choices[0].message.content == "The model is a"
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert {c.message.content for c in many.choices} == {one.choices[0].message.content}
    assert one.usage is not None and many.usage is not None
    assert many.usage.prompt_tokens == one.usage.prompt_tokens
    assert many.usage.completion_tokens == 3 * one.usage.completion_tokens


def test_chat_n_with_a_seed_is_reproducible(client: openai.OpenAI, model_name: str) -> None:
    def run() -> list[str | None]:
        result = client.chat.completions.create(
            model=model_name,
            messages=CHAT,
            max_tokens=8,
            temperature=1.5,
            seed=11,
            n=3,  # type: ignore[arg-type]
        )
        return [c.message.content for c in result.choices]

    assert run() == run()


def test_chat_n_stream_interleaves_choices_then_the_usage(http: httpx.Client, model_name: str) -> None:
    body = {"model": model_name, "messages": CHAT, "max_tokens": 4, "temperature": 0, "n": 2}
    chunks = _stream(http, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    indexed = [c["choices"][0] for c in chunks[:-1]]
    assert [c["index"] for c in indexed[:2]] == [0, 1]  # each choice's role chunk first
    texts = ["".join(c["delta"].get("content") or "" for c in indexed if c["index"] == i) for i in (0, 1)]
    assert all(texts)  # may still part at a near-tie: each choice decodes its own last prompt token
    assert sum(1 for c in indexed if c["finish_reason"]) == 2


def test_completions_n_and_a_batch_of_prompts(client: openai.OpenAI, model_name: str) -> None:
    alone = [
        client.completions.create(model=model_name, prompt=p, max_tokens=3, temperature=0).choices[0].text
        for p in (COUNTING, "a b c d")
    ]
    result = client.completions.create(
        model=model_name, prompt=[COUNTING, "a b c d"], max_tokens=3, temperature=0, n=2
    )
    assert [(c.index, c.text) for c in result.choices] == list(enumerate([alone[0]] * 2 + [alone[1]] * 2))


def test_n_over_the_slots_is_400(http: httpx.Client, model_name: str) -> None:
    body = {"model": model_name, "messages": CHAT, "max_tokens": 2, "n": 9}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert "n_parallel" in error["message"]
    body = {"model": model_name, "prompt": "x", "max_tokens": 2, "n": 129}
    assert assert_openai_error(http.post("/v1/completions", json=body), 400)["param"] == "n"


# -- token ids ---------------------------------------------------------------------------------
def test_completion_token_ids_match_the_text(http: httpx.Client, model_name: str) -> None:
    ids = http.post("/tokenize", json={"content": COUNTING}).json()["tokens"]
    answers = [
        http.post(
            "/v1/completions", json={"model": model_name, "prompt": p, "max_tokens": 3, "temperature": 0}
        )
        for p in (COUNTING, ids, [ids])
    ]
    assert len({a.json()["choices"][0]["text"] for a in answers}) == 1


@pytest.mark.parametrize("prompt", [[-1], [2**31], [[2], [10**9]]], ids=["negative", "huge", "in a batch"])
def test_token_ids_outside_the_vocabulary_are_400(http: httpx.Client, model_name: str, prompt: Any) -> None:
    body = {"model": model_name, "prompt": prompt, "max_tokens": 2}
    assert_openai_error(http.post("/v1/completions", json=body), 400)


def test_embeddings_of_token_ids(client: openai.OpenAI, http: httpx.Client, model_name: str) -> None:
    ids = http.post("/tokenize", json={"content": "a short text"}).json()["tokens"]
    by_text = client.embeddings.create(model=model_name, input="a short text").data[0].embedding
    by_ids = client.embeddings.create(model=model_name, input=ids).data[0].embedding
    assert by_ids == pytest.approx(by_text, abs=1e-4)
    both = client.embeddings.create(model=model_name, input=[ids, ids[:1]])
    assert [d.index for d in both.data] == [0, 1]
    assert both.usage.prompt_tokens == len(ids) + 1


@pytest.mark.parametrize(
    "given", [[10**9], [[1], [-3]], [[]], []], ids=["huge", "negative", "empty ids", "none"]
)
def test_bad_embedding_token_ids_are_400(http: httpx.Client, model_name: str, given: Any) -> None:
    assert_openai_error(http.post("/v1/embeddings", json={"model": model_name, "input": given}), 400)
