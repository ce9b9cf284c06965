"""ChatLlamaCpp on the real default model: messages, streaming, tools, structured output."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from llamacpp_integrations.langchain import ChatLlamaCpp
from llamacpp_integrations.langchain.chat_models import _to_openai_messages, _tool_choice
from llamacpp_native import OutputTruncatedError
from mtmd_support import noise_png


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}."


@tool
def get_time(city: str) -> str:
    """Get the local time in a city."""
    return "12:00"


class Joke(BaseModel):
    """A joke to tell the user."""

    setup: str = Field(description="the question that sets up the joke", max_length=40)
    punchline: str = Field(description="the answer that resolves the joke", max_length=40)


class JokeDict(TypedDict):
    """A joke to tell the user."""

    setup: Annotated[str, ..., "the question that sets up the joke"]
    punchline: Annotated[str, ..., "the answer that resolves the joke"]


@pytest.fixture
def chat(lc_params: dict[str, Any]) -> ChatLlamaCpp:
    return ChatLlamaCpp(**{**lc_params, "max_tokens": 48})


def _few_shot_weather(question: str) -> list[BaseMessage]:
    """Two worked examples, then the question: what a 270M base model needs to see to call a tool."""

    def call(city: str, call_id: str) -> AIMessage:
        return AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": call_id}])

    return [
        SystemMessage("Answer by calling a tool."),
        HumanMessage("Weather in London?"),
        call("London", "c1"),
        HumanMessage("Weather in Tokyo?"),
        call("Tokyo", "c2"),
        HumanMessage(question),
    ]


# -- messages and metadata ----------------------------------------------------------------
def test_invoke_messages_returns_an_ai_message_with_metadata(chat: ChatLlamaCpp) -> None:
    messages = [
        SystemMessage("You are a helpful assistant."),
        HumanMessage("Write a short poem about the sea."),
    ]
    message = chat.invoke(messages)
    assert isinstance(message, AIMessage) and isinstance(message.content, str)
    assert message.response_metadata["finish_reason"] in {"stop", "length"}
    assert message.response_metadata["model_name"].endswith(".gguf")
    usage = message.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] == chat.get_num_tokens_from_messages(messages)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_stream_ends_with_a_last_chunk_carrying_usage(chat: ChatLlamaCpp) -> None:
    chunks = list(chat.stream("Write a short poem about the sea.", max_tokens=8))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata
    assert sum(bool(c.usage_metadata) for c in chunks) == 1  # input tokens counted once
    full = sum(chunks[1:], chunks[0])
    assert full.usage_metadata and full.usage_metadata["output_tokens"] == 8


def test_logprobs_when_asked(lc_params: dict[str, Any]) -> None:
    message = ChatLlamaCpp(**{**lc_params, "max_tokens": 4}, logprobs=True, top_logprobs=2).invoke(
        "Write a short poem about the sea."
    )
    content = message.response_metadata["logprobs"]["content"]
    assert content and all(len(item["top_logprobs"]) == 2 for item in content)


# -- images ----------------------------------------------------------------------------------
def _png_base64(seed: int) -> str:
    return base64.b64encode(noise_png(seed)).decode()


def test_an_image_without_a_projector_says_to_load_one(chat: ChatLlamaCpp) -> None:
    image = HumanMessage([{"type": "image", "base64": _png_base64(1), "mime_type": "image/png"}])
    with pytest.raises(ValueError, match="mmproj_path"):
        chat.invoke([image])


def test_unsupported_content_blocks_are_named(chat: ChatLlamaCpp) -> None:
    document = HumanMessage(
        [{"type": "file", "base64": "AAAA", "mime_type": "application/pdf", "filename": "a.pdf"}]
    )
    with pytest.raises(ValueError, match="file"):
        chat.invoke([document])


def test_image_blocks_in_langchain_and_openai_form_reach_the_model_alike(
    lc_params: dict[str, Any], projector_path: Path
) -> None:
    chat = ChatLlamaCpp(**{**lc_params, "max_tokens": 3}, mmproj_path=str(projector_path))
    text = {"type": "text", "text": "What is in this picture?"}
    data = _png_base64(31)
    standard = HumanMessage([text, {"type": "image", "base64": data, "mime_type": "image/png"}])
    openai_form = HumanMessage(
        [text, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]
    )
    first = chat.invoke([standard])
    second = chat.invoke([openai_form])
    assert first.usage_metadata is not None and second.usage_metadata is not None
    assert first.usage_metadata["input_tokens"] == second.usage_metadata["input_tokens"]
    # the same image, so the second prompt is served from the prefix cache
    assert (
        second.usage_metadata["input_token_details"]["cache_read"]
        == second.usage_metadata["input_tokens"] - 1
    )
    assert chat.get_num_tokens_from_messages([standard]) == first.usage_metadata["input_tokens"]


# -- tools -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tool_choice",
    ["get_weather", "any", "required", True, {"type": "function", "function": {"name": "get_weather"}}],
)
def test_forced_tool_call(chat: ChatLlamaCpp, tool_choice: Any) -> None:
    message = chat.bind_tools([get_weather], tool_choice=tool_choice).invoke("What is the weather in Paris?")
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert len(message.tool_calls) == 1  # one call per turn unless parallel_tool_calls=True
    call = message.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"]


def test_forced_tool_call_streams_tool_call_chunks(chat: ChatLlamaCpp) -> None:
    chunks = list(chat.bind_tools([get_weather, get_time], tool_choice="get_time").stream("Time in Rome?"))
    assert any(isinstance(c, AIMessageChunk) and c.tool_call_chunks for c in chunks)
    full = sum(chunks[1:], chunks[0])
    assert isinstance(full, AIMessageChunk)
    assert [call["name"] for call in full.tool_calls] == ["get_time"]


class CityWeather(BaseModel):
    """Get the weather in a city."""

    city: Literal["Paris"]


def test_a_streamed_call_arrives_in_fragments_that_add_up_to_the_whole_call(chat: ChatLlamaCpp) -> None:
    chunks = list(chat.bind_tools([CityWeather], tool_choice="any").stream("Weather in Paris?"))
    fragments = [f for c in chunks for f in c.tool_call_chunks]  # type: ignore[attr-defined]
    assert len(fragments) > 1, "the arguments stream as they are generated"
    assert fragments[0]["name"] == "CityWeather" and fragments[0]["id"]
    assert all(f["name"] is None and f["id"] is None and f["index"] == 0 for f in fragments[1:])
    full = sum(chunks[1:], chunks[0])
    assert isinstance(full, AIMessageChunk)
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("CityWeather", {"city": "Paris"})]
    assert full.response_metadata["finish_reason"] == "tool_calls"


def test_thinking_goes_to_reasoning_content_not_the_content(
    lc_params: dict[str, Any], chat_templates_dir: Path
) -> None:
    qwen3 = (chat_templates_dir / "Qwen-Qwen3-0.6B.jinja").read_text()
    chat = ChatLlamaCpp(**lc_params, model_kwargs={"chat_template": qwen3})
    grammar = 'root ::= "<think>\\nIt is a greeting.\\n</think>\\n\\nHello"'
    chunks = list(chat.stream("Hi", grammar=grammar, max_tokens=64))
    assert sum(1 for c in chunks if c.additional_kwargs.get("reasoning_content")) > 1
    full = sum(chunks[1:], chunks[0])
    assert full.content == "Hello"
    assert full.additional_kwargs["reasoning_content"].strip() == "It is a greeting."
    shown = ChatLlamaCpp(**lc_params, model_kwargs={"chat_template": qwen3}, reasoning_format="none")
    assert shown.invoke("Hi", grammar=grammar, max_tokens=64).content.startswith("<think>")


def test_several_tool_calls_per_turn(chat: ChatLlamaCpp) -> None:
    example = AIMessage(
        "",
        tool_calls=[
            {"name": "get_weather", "args": {"city": "London"}, "id": "c1"},
            {"name": "get_weather", "args": {"city": "Tokyo"}, "id": "c2"},
        ],
    )
    bound = chat.bind_tools([get_weather], tool_choice="required", parallel_tool_calls=True)
    message = bound.invoke(
        [HumanMessage("Weather in London and Tokyo?"), example, HumanMessage("Weather in Paris and Rome?")],
        max_tokens=80,
    )
    names = [call["name"] for call in message.tool_calls + message.invalid_tool_calls]
    assert len(names) >= 2 and set(names) <= {"get_weather", "get_time"}


def test_tool_choice_none_answers_in_text(chat: ChatLlamaCpp) -> None:
    message = chat.bind_tools([get_weather], tool_choice="none").invoke("What is the weather in Paris?")
    assert not message.tool_calls and message.content


def test_tool_results_are_fed_back(chat: ChatLlamaCpp) -> None:
    history = [
        HumanMessage("What is the weather in Paris?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}]),
        ToolMessage("It is sunny in Paris.", tool_call_id="call-1"),
    ]
    converted = _to_openai_messages(history)
    assert converted[1]["tool_calls"][0] == {
        "type": "function",
        "id": "call-1",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert converted[2] == {"role": "tool", "tool_call_id": "call-1", "content": "It is sunny in Paris."}
    prompt = chat.llama.render_chat(converted, tools=None).prompt
    assert (
        '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
        and "It is sunny in Paris." in prompt
    )
    assert isinstance(chat.bind_tools([get_weather]).invoke(history), AIMessage)


def test_tool_choice_forms() -> None:
    tools = [{"type": "function", "function": {"name": name}} for name in ("a", "b")]
    forced_a = {"type": "function", "function": {"name": "a"}}
    assert [_tool_choice(c, tools) for c in (None, "auto", False, "none", "any", "required")] == [
        "auto",
        "auto",
        "auto",
        "none",
        "required",
        "required",
    ]
    assert (
        _tool_choice("a", tools)
        == _tool_choice(forced_a, tools)
        == _tool_choice({"name": "a"}, tools)
        == forced_a
    )
    assert _tool_choice(True, tools[:1]) == forced_a
    with pytest.raises(ValueError, match="exactly one tool"):
        _tool_choice(True, tools)
    with pytest.raises(ValueError, match="not given"):
        _tool_choice("c", tools)


def test_auto_tool_choice_returns_the_call_the_model_makes(lc_params: dict[str, Any]) -> None:
    chat = ChatLlamaCpp(**{**lc_params, "max_tokens": 32})
    message = chat.bind_tools([get_weather], tool_choice="auto").invoke(
        _few_shot_weather("Weather in Paris?")
    )
    assert [(call["name"], call["args"]) for call in message.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    answer = chat.bind_tools([get_weather]).invoke("Write a short poem about the sea.")
    assert not answer.tool_calls and answer.content  # auto: text stays text


# -- structured output ---------------------------------------------------------------------
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_gives_a_joke(lc_params: dict[str, Any], method: str) -> None:
    chat = ChatLlamaCpp(**{**lc_params, "max_tokens": 100})  # bounded by the schema's maxLength
    joke = chat.with_structured_output(Joke, method=method).invoke("Tell me a joke about cats.")  # type: ignore[arg-type]
    assert isinstance(joke, Joke)


def test_with_structured_output_typed_dict_and_include_raw(lc_params: dict[str, Any]) -> None:
    chat = ChatLlamaCpp(**{**lc_params, "max_tokens": 100})
    schema = {**Joke.model_json_schema(), "title": "JokeDict"}
    result = chat.with_structured_output(schema, include_raw=True).invoke("Tell me a joke about cats.")
    assert set(result) == {"raw", "parsed", "parsing_error"}
    assert isinstance(result["raw"], AIMessage) and result["parsing_error"] is None
    assert set(result["parsed"]) == {"setup", "punchline"}
    assert chat.with_structured_output(JokeDict)  # TypedDicts are accepted too


def test_json_mode_admits_only_json(chat: ChatLlamaCpp, json_prefix: Callable[[str], bool]) -> None:
    result = chat.with_structured_output(JokeDict, method="json_mode", include_raw=True).invoke(
        "Tell me a joke about cats as JSON."
    )
    raw = result["raw"]
    assert json_prefix(raw.content), raw.content  # whatever the model chose, and wherever it stopped
    if raw.response_metadata["finish_reason"] == "stop":
        assert isinstance(json.loads(raw.content), dict)
    else:
        assert isinstance(result["parsing_error"], OutputTruncatedError)


@pytest.mark.parametrize("method", ["json_mode", "json_schema", "function_calling"])
def test_structured_output_cut_off_by_max_tokens_names_max_tokens(chat: ChatLlamaCpp, method: str) -> None:
    extractor = chat.model_copy(update={"max_tokens": 3}).with_structured_output(Joke, method=method)
    with pytest.raises(OutputTruncatedError, match="max_tokens after 3 tokens"):
        extractor.invoke("Tell me a joke about cats as JSON.")


def test_structured_output_rejects_unknown_arguments(chat: ChatLlamaCpp) -> None:
    with pytest.raises(ValueError, match="unsupported arguments"):
        chat.with_structured_output(Joke, tools=[])


# -- async -------------------------------------------------------------------------------------
class _Tokens(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.count = 0

    async def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        self.count += 1


async def test_ainvoke_and_astream(chat: ChatLlamaCpp) -> None:
    message = await chat.ainvoke("Write a short poem about the sea.", max_tokens=6)
    chunks = [c async for c in chat.astream("Write a short poem about the sea.", max_tokens=6)]
    assert chunks[-1].chunk_position == "last"
    assert sum(chunks[1:], chunks[0]).content == message.content  # greedy: the same text


async def test_cancelling_the_task_stops_decoding(lc_params: dict[str, Any]) -> None:
    handler = _Tokens()
    chat = ChatLlamaCpp(**{**lc_params, "max_tokens": 900}, callbacks=[handler])
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in chat.astream("Write a long story."):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert chat.llama.engine.wait_idle(timeout=60)
    assert handler.count < 100


class WeatherInput(BaseModel):
    location: str = Field(description="The city, e.g. Paris")
    unit: str = Field(json_schema_extra={"enum": ["celsius", "fahrenheit"]})


@tool("get_weather_in", args_schema=WeatherInput)
def get_weather_in(location: str, unit: str) -> str:
    """Get the current weather in a city, in the given unit."""
    return f"It is 21 degrees {unit} in {location}."


def test_a_tools_args_schema_keeps_its_enum(chat: ChatLlamaCpp) -> None:
    # convert_to_openai_tool drops this enum; the grammar must still enforce it.
    message = chat.bind_tools([get_weather_in], tool_choice="get_weather_in").invoke(
        "What's the weather in Paris in Celsius?"
    )
    assert isinstance(message, AIMessage) and message.tool_calls
    assert message.tool_calls[0]["args"]["unit"] in {"celsius", "fahrenheit"}
