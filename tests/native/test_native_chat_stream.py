"""The chat output stream: tool calls and thinking arrive as they are generated, for many template families.

The default model is driven through the chat templates of other model families
(llama.cpp's own copies of them, in the pinned source), and every reply is forced
by a grammar, so the parsed result is the same on any CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamacpp_native import Finish, Llama, ReasoningDelta, TextDelta, ToolCallDelta, Usage

CITY_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL_FAMILIES = {
    "qwen3": "Qwen-Qwen3-0.6B.jinja",
    "llama3": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "ministral": "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
    "glm": "GLM-4.6.jinja",
}
THINK_AND_GREET = 'root ::= "<think>\\nI should greet.\\n</think>\\n\\nHello there"'


def _family(model_path: Path, templates: Path, file: str) -> Iterator[Llama]:
    with Llama(model_path, n_ctx=2048, n_parallel=2, chat_template=(templates / file).read_text()) as llm:
        yield llm


@pytest.fixture(scope="module", params=sorted(TOOL_FAMILIES))
def tool_family(
    request: pytest.FixtureRequest, model_path: Path, chat_templates_dir: Path
) -> Iterator[Llama]:
    yield from _family(model_path, chat_templates_dir, TOOL_FAMILIES[request.param])


@pytest.fixture(scope="module")
def qwen3(model_path: Path, chat_templates_dir: Path) -> Iterator[Llama]:
    yield from _family(model_path, chat_templates_dir, "Qwen-Qwen3-0.6B.jinja")


@pytest.fixture(scope="module")
def deepseek_r1(model_path: Path, chat_templates_dir: Path) -> Iterator[Llama]:
    yield from _family(model_path, chat_templates_dir, "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja")


def _deltas(chunks: list[dict[str, Any]], key: str) -> list[Any]:
    return [c["choices"][0]["delta"][key] for c in chunks if c["choices"][0]["delta"].get(key) is not None]


def test_a_tool_call_streams_in_fragments_under_one_index(tool_family: Llama) -> None:
    chunks = list(
        tool_family.create_chat_completion(
            ASK, tools=[CITY_TOOL], tool_choice="required", max_tokens=120, stream=True
        )
    )
    fragments = [f for batch in _deltas(chunks, "tool_calls") for f in batch]
    assert len(fragments) > 1, "arguments stream as they are generated, not in one final delta"
    assert {f["index"] for f in fragments} == {0}
    first, rest = fragments[0], fragments[1:]
    assert first["id"] and first["type"] == "function" and first["function"]["name"] == "get_weather"
    assert all("id" not in f and "name" not in f["function"] for f in rest), "id and name are sent once"
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_the_whole_reply_joins_the_fragments_into_one_call(tool_family: Llama) -> None:
    reply = tool_family.create_chat_completion(ASK, tools=[CITY_TOOL], tool_choice="required", max_tokens=120)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_one_call_by_default_even_when_a_call_is_required(qwen3: Llama) -> None:
    reply = qwen3.create_chat_completion(
        ASK, tools=[CITY_TOOL, TIME_TOOL], tool_choice="required", max_tokens=200
    )
    assert reply["choices"][0]["finish_reason"] == "tool_calls"
    assert len(reply["choices"][0]["message"]["tool_calls"]) == 1


def test_a_call_cut_off_by_max_tokens_is_returned_partial_with_length(qwen3: Llama) -> None:
    rendered = qwen3.render_chat(ASK, tools=[CITY_TOOL], tool_choice="required")
    whole = qwen3.engine.generate(qwen3.chat_request(rendered, max_tokens=120)).tokens
    # cut where the arguments have begun: '{"city"' is out, its value is not
    cut = next(n for n in range(len(whole)) if b'"city"' in qwen3.detokenize(whole[:n]))
    reply = qwen3.create_chat_completion(ASK, tools=[CITY_TOOL], tool_choice="required", max_tokens=cut)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "length"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert not _is_json(call["function"]["arguments"]), "the arguments are the part generated so far"


def test_malformed_tool_call_text_stays_text(qwen3: Llama) -> None:
    # the string value is never closed
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par</tool_call>'
    broken = "root ::= " + json.dumps(call)
    reply = qwen3.create_chat_completion(ASK, tools=[CITY_TOOL], grammar=broken, max_tokens=60)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]
    assert "get_weather" in choice["message"]["content"]


def test_thinking_streams_apart_from_the_content(qwen3: Llama) -> None:
    chunks = list(qwen3.create_chat_completion(ASK, grammar=THINK_AND_GREET, max_tokens=40, stream=True))
    assert len(_deltas(chunks, "reasoning_content")) > 1
    assert "".join(_deltas(chunks, "reasoning_content")).strip() == "I should greet."
    assert "".join(_deltas(chunks, "content")) == "Hello there"
    whole = qwen3.create_chat_completion(ASK, grammar=THINK_AND_GREET, max_tokens=40)["choices"][0]["message"]
    assert whole["content"] == "Hello there" and whole["reasoning_content"].strip() == "I should greet."


def test_reasoning_format_none_leaves_the_thinking_in_the_content(qwen3: Llama) -> None:
    reply = qwen3.create_chat_completion(ASK, grammar=THINK_AND_GREET, max_tokens=40, reasoning_format="none")
    message = reply["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert message["content"].startswith("<think>") and message["content"].endswith("Hello there")


def test_chat_template_kwargs_reach_the_template(qwen3: Llama) -> None:
    thinking = qwen3.render_chat(ASK).prompt
    quiet = qwen3.render_chat(ASK, chat_template_kwargs={"enable_thinking": False}).prompt
    assert "</think>" not in thinking
    assert quiet.startswith(thinking) and "</think>" in quiet[len(thinking) :]


def test_a_reasoning_budget_forces_the_end_of_thinking(deepseek_r1: Llama) -> None:
    reply = deepseek_r1.create_chat_completion(ASK, max_tokens=24, reasoning_budget=2)
    message = reply["choices"][0]["message"]
    thought = deepseek_r1.tokenize(message.get("reasoning_content", ""), add_bos=False)
    assert len(thought) <= 3, f"two tokens of thinking (and a partial character at most), got {thought}"
    assert "</think>" not in (message["content"] or "")


def test_thinking_stays_free_and_the_schema_starts_after_it(deepseek_r1: Llama) -> None:
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes"]}}, "required": ["answer"]}
    reply = deepseek_r1.create_chat_completion(
        ASK,
        response_format={"type": "json_schema", "json_schema": {"schema": schema}},
        reasoning_budget=4,
        max_tokens=60,
    )
    message = reply["choices"][0]["message"]
    assert message.get("reasoning_content"), "the model thought first, outside the schema"
    assert json.loads(message["content"]) == {"answer": "yes"}


def test_events_are_the_one_stream_every_front_end_renders(qwen3: Llama) -> None:
    batches = list(qwen3.chat_events(ASK, tools=[CITY_TOOL], tool_choice="required", max_tokens=120))
    events = [e for batch in batches for e in batch]
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls[0].name == "get_weather" and calls[0].id and all(c.name is None for c in calls[1:])
    assert not [e for e in events if isinstance(e, TextDelta | ReasoningDelta) and e.text.strip()]
    assert [type(e) for e in events[-2:]] == [Finish, Usage]
    assert events[-2] == Finish("tool_calls")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reasoning_format": "verbose"}, "reasoning_format"),
        ({"reasoning_budget": -1}, "reasoning_budget"),
        ({"chat_template_kwargs": {"enable_thinking": "no"}}, "enable_thinking"),
    ],
)
def test_bad_thinking_controls_are_refused_before_generating(
    qwen3: Llama, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        qwen3.create_chat_completion(ASK, max_tokens=4, **options)
    assert qwen3.create_chat_completion(ASK, max_tokens=2)["choices"][0]["finish_reason"] == "length"


def test_bad_constructor_thinking_controls_are_refused(model_path: Path) -> None:
    with pytest.raises(ValueError, match="reasoning_format"):
        Llama(model_path, vocab_only=True, reasoning_format="loud")
    with pytest.raises(ValueError, match="reasoning_budget"):
        Llama(model_path, vocab_only=True, reasoning_budget=-5)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
