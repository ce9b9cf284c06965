"""``POST /v1/completions``: text, streaming, usage, logprobs, logit bias, stop, seed, grammar."""

from __future__ import annotations

import json

import httpx
import openai
from server_support import assert_openai_error, sse_data

NO_END = {"ignore_eos": True}
"""End tokens suppressed: the reply is exactly max_tokens long."""


def test_completion_has_the_openai_shape(client: openai.OpenAI, model_name: str) -> None:
    result = client.completions.create(
        model=model_name, prompt="Once upon a time", max_tokens=6, extra_body=NO_END
    )
    assert result.object == "text_completion"
    assert result.model == client.models.list().data[0].id
    assert len(result.choices) == 1 and result.choices[0].text
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 6
    assert result.usage.total_tokens == result.usage.prompt_tokens + 6


def test_a_stream_is_server_sent_events_ending_in_done(http: httpx.Client, model_name: str) -> None:
    body = {"model": model_name, "prompt": "Once upon a time", "max_tokens": 5, "stream": True, **NO_END}
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_data(list(response.iter_lines()))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_include_usage_adds_a_last_chunk_without_choices(client: openai.OpenAI, model_name: str) -> None:
    chunks = list(
        client.completions.create(
            model=model_name,
            prompt="Once upon a time",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=NO_END,
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_logprobs_list_each_token_with_its_top_alternatives(client: openai.OpenAI, model_name: str) -> None:
    result = client.completions.create(
        model=model_name, prompt="The capital of France is", max_tokens=4, logprobs=2, extra_body=NO_END
    )
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.top_logprobs is not None
    assert len(logprobs.tokens) == 4
    assert "".join(logprobs.tokens) == result.choices[0].text
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs)


def test_logit_bias_keys_are_token_ids_as_strings(
    client: openai.OpenAI, http: httpx.Client, model_name: str
) -> None:
    (cat,) = http.post("/tokenize", json={"content": " cat", "add_special": False}).json()["tokens"]
    result = client.completions.create(
        model=model_name, prompt="My pet is a", max_tokens=3, temperature=0, logit_bias={str(cat): 100}
    )
    assert result.choices[0].text == " cat" * 3


def test_stop_cuts_the_text_before_the_stop_string(
    client: openai.OpenAI, http: httpx.Client, model_name: str
) -> None:
    (cat,) = http.post("/tokenize", json={"content": " cat", "add_special": False}).json()["tokens"]
    result = client.completions.create(
        model=model_name,
        prompt="My pet is a",
        max_tokens=8,
        temperature=0,
        logit_bias={str(cat): 100},
        stop=["cat cat"],
    )
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].text == " "
    assert result.usage is not None and result.usage.completion_tokens < 8


def test_the_same_seed_samples_the_same_text(client: openai.OpenAI, model_name: str) -> None:
    def sample() -> str:
        result = client.completions.create(
            model=model_name, prompt="A dragon", max_tokens=8, temperature=1.0, seed=7, extra_body=NO_END
        )
        return result.choices[0].text

    assert sample() == sample()


def test_token_prompt_with_echo(client: openai.OpenAI, http: httpx.Client, model_name: str) -> None:
    tokens = http.post("/tokenize", json={"content": "Once upon a time"}).json()["tokens"]
    result = client.completions.create(
        model=model_name, prompt=tokens, max_tokens=3, echo=True, extra_body=NO_END
    )
    assert result.choices[0].text.startswith("Once upon a time")


def test_a_suffix_on_a_model_without_fim_tokens_is_a_400_that_says_so(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"prompt": "def f(", "suffix": "):", "max_tokens": 3})
    error = assert_openai_error(response, 400, "not_supported")
    assert "FIM tokens" in error["message"]


def test_grammar_constrains_the_text(client: openai.OpenAI, model_name: str) -> None:
    result = client.completions.create(
        model=model_name,
        prompt="Is the sky blue? Answer:",
        max_tokens=8,
        extra_body={"grammar": 'root ::= " yes" | " no"'},
    )
    assert result.choices[0].text in (" yes", " no")


def test_llama_server_sampling_fields_are_accepted(client: openai.OpenAI, model_name: str) -> None:
    result = client.completions.create(
        model=model_name,
        prompt="Once upon a time",
        max_tokens=3,
        extra_body={"top_k": 20, "min_p": 0.1, "repeat_penalty": 1.1, "typical_p": 0.9, **NO_END},
    )
    assert result.usage is not None and result.usage.completion_tokens == 3
