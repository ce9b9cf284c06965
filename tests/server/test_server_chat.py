"""``POST /v1/chat/completions``: replies, streams, logprobs, tools, structured output, prefix cache."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from server_support import WEATHER_TOOL, assert_openai_error, sse_data

NO_END = {"ignore_eos": True}
"""End tokens suppressed: the reply is exactly max_tokens long."""

HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}


def test_chat_completion_has_the_openai_shape(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(model=model_name, messages=HELLO, max_tokens=5, extra_body=NO_END)
    assert result.object == "chat.completion"
    message = result.choices[0].message
    assert message.role == "assistant" and message.content
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 5


def test_max_completion_tokens_limits_the_reply(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(
        model=model_name, messages=HELLO, max_completion_tokens=3, extra_body=NO_END
    )
    assert result.usage is not None and result.usage.completion_tokens == 3


def test_omitting_the_model_uses_the_default(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"


def test_a_streamed_reply_starts_with_the_role_and_ends_with_usage(
    client: openai.OpenAI, model_name: str
) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model_name,
            messages=HELLO,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=NO_END,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


def test_raw_chat_stream_ends_in_done(http: httpx.Client, model_name: str) -> None:
    body = {"model": model_name, "messages": HELLO, "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        payloads = sse_data(list(response.iter_lines()))
    assert payloads[-1] == "[DONE]"
    assert all(json.loads(p)["object"] == "chat.completion.chunk" for p in payloads[:-1])


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
def test_streamed_deltas_never_carry_empty_content(http: httpx.Client, model_name: str, tools: bool) -> None:
    body: dict[str, Any] = {"model": model_name, "messages": HELLO, "max_tokens": 4, "stream": True}
    if tools:
        body |= {"tools": [WEATHER_TOOL], "tool_choice": "required"}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        chunks = [json.loads(p) for p in sse_data(list(response.iter_lines()))[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant" and deltas[0]["content"] is None  # as llama-server opens
    assert all(d.get("content") != "" for d in deltas)  # text deltas are never empty
    assert all("content" not in d for d in deltas[1:] if "tool_calls" in d)


def test_logprobs_give_each_token_its_top_alternatives(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(
        model=model_name, messages=HELLO, max_tokens=4, logprobs=True, top_logprobs=2, extra_body=NO_END
    )
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == 4
    assert "".join(item.token for item in logprobs.content) == result.choices[0].message.content
    assert all(1 <= len(item.top_logprobs) <= 2 for item in logprobs.content)


def _check_weather_call(call: Any) -> None:
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["unit"] in ("celsius", "fahrenheit")


def test_a_required_tool_call(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(
        model=model_name,
        messages=WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=64,
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    _check_weather_call(choice.message.tool_calls[0])


def test_a_streamed_tool_call_arrives_as_deltas_keyed_by_index(
    client: openai.OpenAI, model_name: str
) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model_name,
            messages=WEATHER,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=64,
            stream=True,
        )
    )
    deltas = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) > 1, "the call streams in fragments, not in one final delta"
    assert {d.index for d in deltas} == {0}
    first, rest = deltas[0], deltas[1:]
    assert all(d.id is None and d.function.name is None for d in rest), "id and name come once, first"
    first.function.arguments += "".join(d.function.arguments or "" for d in rest)
    _check_weather_call(first)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_named_tool_choice_calls_that_tool(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(
        model=model_name,
        messages=WEATHER,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_tokens=64,
    )
    calls = result.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["get_time"]
    assert json.loads(calls[0].function.arguments)["zone"] in ("UTC", "CET")


def test_tool_choice_none_answers_in_text(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(
        model=model_name, messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=8
    )
    assert not result.choices[0].message.tool_calls
    assert result.choices[0].finish_reason in ("stop", "length")


def test_tool_choice_auto_answers_in_text_or_a_valid_call(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(
        model=model_name,
        messages=WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        parallel_tool_calls=False,
        max_tokens=64,
    )
    choice = result.choices[0]
    if choice.finish_reason == "tool_calls":
        assert choice.message.tool_calls is not None
        _check_weather_call(choice.message.tool_calls[0])
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content


def test_a_tool_result_turn_is_answered(client: openai.OpenAI, model_name: str) -> None:
    messages: list[Any] = [
        *WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    result = client.chat.completions.create(
        model=model_name, messages=messages, tools=[WEATHER_TOOL], max_tokens=6, extra_body=NO_END
    )
    assert result.choices[0].message.content
    assert result.choices[0].finish_reason == "length"


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"type": "string", "enum": ["cat", "dog", "none"]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_strict_json_schema_reply_validates(client: openai.OpenAI, model_name: str, stream: bool) -> None:
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    messages: Any = [{"role": "user", "content": "Describe a person as JSON."}]
    if stream:
        chunks = client.chat.completions.create(
            model=model_name, messages=messages, response_format=response_format, max_tokens=96, stream=True
        )
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        result = client.chat.completions.create(
            model=model_name, messages=messages, response_format=response_format, max_tokens=96
        )
        assert result.choices[0].finish_reason == "stop"
        content = result.choices[0].message.content or ""
    jsonschema.validate(json.loads(content), PERSON)


def test_text_response_format_is_a_plain_reply(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(
        model=model_name, messages=HELLO, response_format={"type": "text"}, max_tokens=4, extra_body=NO_END
    )
    assert result.choices[0].message.content and result.choices[0].finish_reason == "length"


def test_json_object_mode_replies_with_an_object(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "Give me a JSON object with a color."}],
        response_format={"type": "json_object"},
        max_tokens=48,
        temperature=0,
    )
    if result.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(result.choices[0].message.content or ""), dict)
    else:  # cut by max_tokens: what came so far is still the start of an object
        assert (result.choices[0].message.content or "").lstrip().startswith("{")


def test_grammar_field_constrains_the_reply(client: openai.OpenAI, model_name: str) -> None:
    result = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        max_tokens=8,
        extra_body={"grammar": 'root ::= "yes" | "no"'},
    )
    assert result.choices[0].message.content in ("yes", "no")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
def test_a_top_level_json_schema_constrains_the_reply(http: httpx.Client, model_name: str, path: str) -> None:
    body = {
        "model": model_name,
        "messages": [{"role": "user", "content": "Pick a colour."}],
        "max_tokens": 16,
        "json_schema": {"const": "teal"},  # llama-server's shorthand for response_format json_schema
    }
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == "teal"


def _json_schema(given: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": given}


@pytest.mark.parametrize("strict", [False, True])
def test_a_draft7_tuple_schema_without_dollar_schema_is_accepted(
    http: httpx.Client, model_name: str, strict: bool
) -> None:
    schema = {"type": "array", "items": [{"type": "integer"}], "minItems": 1, "maxItems": 1}
    given = {"name": "one", "schema": schema, "strict": strict}
    body = {"model": model_name, "messages": HELLO, "max_tokens": 40}
    response = http.post("/v1/chat/completions", json={**body, "response_format": _json_schema(given)})
    assert response.status_code == 200, response.text
    value = json.loads(response.json()["choices"][0]["message"]["content"])  # 40 tokens hold any integer
    assert isinstance(value, list) and len(value) == 1 and isinstance(value[0], int)
    newest = {**schema, "$schema": "https://json-schema.org/draft/2020-12/schema"}  # items: one schema
    refused = {**body, "response_format": _json_schema({"name": "one", "schema": newest})}
    assert_openai_error(http.post("/v1/chat/completions", json=refused), 400)


@pytest.mark.parametrize("path", ["/v1/chat/completions/input_tokens", "/chat/completions/input_tokens"])
def test_input_tokens_counts_the_prompt_a_chat_would_use(
    client: openai.OpenAI, http: httpx.Client, model_name: str, path: str
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    counted = http.post(path, json={"model": model_name, "messages": messages})
    assert counted.status_code == 200, counted.text
    reply = client.chat.completions.create(model=model_name, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert reply.usage is not None
    assert counted.json() == {"input_tokens": reply.usage.prompt_tokens}
    assert_openai_error(http.post(path, json={"model": model_name, "messages": []}), 400)


def test_verbose_adds_llama_servers_debug_object(http: httpx.Client, model_name: str) -> None:
    body = {"model": model_name, "messages": [{"role": "user", "content": "Name a book."}], "max_tokens": 2}
    debug = http.post("/v1/chat/completions", json={**body, "verbose": True}).json()
    assert "Name a book." in debug["__verbose"]["prompt"]  # the prompt as the template rendered it
    assert debug["__verbose"]["tokens_evaluated"] == debug["usage"]["prompt_tokens"]
    assert debug["__verbose"]["content"] == debug["choices"][0]["message"]["content"]
    for plain in ({}, {"verbose": False}):  # off unless asked for, on a server without --verbose
        assert "__verbose" not in http.post("/v1/chat/completions", json={**body, **plain}).json()


def test_a_repeated_system_prompt_comes_from_the_prefix_cache(client: openai.OpenAI, model_name: str) -> None:
    system = "You are a careful assistant. " + " ".join(
        f"Rule {i}: answer briefly and politely." for i in range(40)
    )
    messages: Any = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]
    first = client.chat.completions.create(model=model_name, messages=messages, max_tokens=2)
    second = client.chat.completions.create(model=model_name, messages=messages, max_tokens=2)
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens > 200
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= second.usage.prompt_tokens - 8


PAIR_OF_ONES = {"type": "array", "items": {"enum": [1]}, "minItems": 2, "maxItems": 2, "uniqueItems": True}
"""The grammar admits only ``[1, 1]``, which ``uniqueItems`` (checked after generation) refuses."""


def test_a_strict_schema_the_grammar_cannot_enforce_is_400_before_generating(
    http: httpx.Client, model_name: str
) -> None:
    """``uniqueItems`` is only checked after generation: with "strict": true that is refused up front."""
    body = {
        "model": model_name,
        "messages": [{"role": "user", "content": "Two ones."}],
        "max_tokens": 32,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "p", "schema": PAIR_OF_ONES, "strict": True},
        },
    }
    for stream in (False, True):
        error = assert_openai_error(http.post("/v1/chat/completions", json={**body, "stream": stream}), 400)
        assert error["type"] == "invalid_request_error"
        assert "strict=True" in error["message"] and "uniqueItems at (root)" in error["message"]


def test_a_reply_breaking_a_lenient_schema_is_still_returned(http: httpx.Client, model_name: str) -> None:
    """Without "strict", the server returns what the grammar produced (the client validates)."""
    body = {
        "model": model_name,
        "messages": [{"role": "user", "content": "Two ones."}],
        "max_tokens": 32,
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PAIR_OF_ONES}},
    }
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == [1, 1]
