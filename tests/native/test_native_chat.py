"""Chat completions: the template, OpenAI-shaped results, streaming and JSON output."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from llamacpp_native import ChatTemplateError, Llama

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def chat(llama: Llama, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("max_tokens", 4)
    result = llama.create_chat_completion(messages, temperature=0.0, **kwargs)
    assert isinstance(result, dict)
    return result


def test_the_base_model_gets_gemma_turn_markers(llama: Llama) -> None:
    rendered = llama.render_chat([{"role": "system", "content": "Be brief."}, *QUESTION])
    # llama.cpp strips a leading BOS from rendered text: the tokenizer is to add it.
    assert rendered.prompt.removeprefix("<bos>") == (
        "<start_of_turn>user\nBe brief.\n\nWhat is the capital of "
        "France?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_an_assistant_turn_is_rendered_as_the_model_role(llama: Llama) -> None:
    messages = [*QUESTION, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Sure?"}]
    assert (
        "<start_of_turn>model\nParis.<end_of_turn>\n<start_of_turn>user\nSure?"
        in llama.render_chat(messages).prompt
    )


def test_a_chat_completion_is_openai_shaped_with_usage(llama: Llama) -> None:
    result = chat(llama, QUESTION)
    assert result["id"].startswith("chatcmpl-")
    assert result["object"] == "chat.completion"
    assert result["model"] == llama.model_path
    (choice,) = result["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    prompt_tokens = len(llama.chat_request(llama.render_chat(QUESTION)).prompt_tokens)
    usage = result["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert 0 < usage["completion_tokens"] <= 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_the_chat_prompt_reaches_the_model_with_exactly_one_bos(llama: Llama) -> None:
    tokens = llama.chat_request(llama.render_chat(QUESTION)).prompt_tokens
    assert tokens[0] == llama.token_bos()
    assert tokens.count(llama.token_bos()) == 1


def test_streamed_chat_deltas_concatenate_to_the_whole_message(llama: Llama) -> None:
    whole = chat(llama, QUESTION)["choices"][0]["message"]["content"]
    chunks = list(llama.create_chat_completion(QUESTION, temperature=0.0, max_tokens=4, stream=True))  # type: ignore[arg-type]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_chat_logprobs_list_each_token_with_its_alternatives(llama: Llama) -> None:
    result = chat(llama, QUESTION, logprobs=True, top_logprobs=2)
    content = result["choices"][0]["logprobs"]["content"]
    assert len(content) == result["usage"]["completion_tokens"]
    assert "".join(item["token"] for item in content) == result["choices"][0]["message"]["content"]
    assert all(len(item["top_logprobs"]) == 2 for item in content)


def test_json_schema_response_format_gives_json_valid_for_the_schema(llama: Llama) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
    }
    result = chat(
        llama,
        [{"role": "user", "content": "Is Paris in France? Reply in JSON."}],
        max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
    )
    document = json.loads(result["choices"][0]["message"]["content"])
    jsonschema.validate(document, schema)
    assert result["choices"][0]["finish_reason"] == "stop"


def test_a_text_response_format_is_free_text(llama: Llama) -> None:
    free = chat(llama, QUESTION)["choices"][0]["message"]["content"]
    assert chat(llama, QUESTION, response_format={"type": "text"})["choices"][0]["message"]["content"] == free


def test_an_unknown_response_format_is_a_value_error(llama: Llama) -> None:
    with pytest.raises(ValueError, match="response_format type must be text, json_object or json_schema"):
        chat(llama, QUESTION, response_format={"type": "yaml"})


def test_a_malformed_message_is_a_chat_template_error(llama: Llama) -> None:
    with pytest.raises(ChatTemplateError, match="Missing 'role'"):
        chat(llama, [{"content": "who am I?"}])


def test_an_unknown_chat_format_is_a_value_error_listing_the_known_ones(llama: Llama) -> None:
    from llamacpp_native.chat.formats import template_for

    with pytest.raises(
        ValueError, match=r"unknown chat_format 'vicuna'; choose one of \['chatml', 'gemma'\]"
    ):
        template_for("vicuna", "gemma3", None)


def test_parallel_tool_calls_off_admits_one_call_block(llama: Llama) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    messages = [{"role": "user", "content": "Call f."}]
    many = llama.render_chat(messages, tools=[tool], tool_choice="required", parallel_tool_calls=True)
    one = llama.render_chat(messages, tools=[tool], tool_choice="required", parallel_tool_calls=False)
    calls_rule = [line for line in one.grammar.splitlines() if line.startswith("tool-calls ::=")]
    assert "tool-calls ::= (tool-call space)+" in many.grammar
    assert calls_rule == ["tool-calls ::= tool-call space"]
