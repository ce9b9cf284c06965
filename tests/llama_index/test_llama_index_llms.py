"""``LlamaCPP`` on the real default model: construction, the LLM interface, tools, structure.

The model is a tiny base model: these tests check structure and behaviour, not wisdom.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ImageBlock,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts import PromptTemplate
from llama_index.core.types import PydanticProgramMode
from llama_index_support import LOAD_SETTINGS, RecordingTool
from pydantic import BaseModel, Field

from llamacpp_integrations._runtime import shared_llama
from llamacpp_integrations.llama_index import LlamaCPP
from llamacpp_native import Finish, OutputTruncatedError, RenderedChat, Usage
from mtmd_support import TOKENS_PER_IMAGE, noise_png

QUESTION = "What is 6 times 7?"
TOOL_TOKENS = {"max_tokens": 64}  # room for a whole tool-call JSON object


class Person(BaseModel):
    """A person."""

    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, content=text)]


# -- construction: nothing loads, nothing downloads ------------------------------------------
def test_construction_loads_nothing_and_reports_the_configured_window() -> None:
    llm = LlamaCPP(model_path="/no/such/model.gguf", context_window=1234, max_new_tokens=7)
    metadata = llm.metadata
    assert metadata.context_window == 1234
    assert metadata.num_output == 7
    assert metadata.is_chat_model and metadata.is_function_calling_model
    assert metadata.model_name == "/no/such/model.gguf"


def test_accepts_the_parameters_of_llama_index_llms_llama_cpp() -> None:
    def messages_to_prompt(messages: Sequence[ChatMessage]) -> str:
        return "\n".join(str(m) for m in messages)

    def completion_to_prompt(completion: str) -> str:
        return f"Q: {completion}\nA:"

    llm = LlamaCPP(
        model_path=None,
        temperature=0.3,
        max_new_tokens=8,
        context_window=512,
        generate_kwargs={"top_p": 0.9},
        model_kwargs={"n_threads": 1},
        verbose=False,
        system_prompt="Be brief.",
        messages_to_prompt=messages_to_prompt,
        completion_to_prompt=completion_to_prompt,
        callback_manager=CallbackManager([]),
        pydantic_program_mode=PydanticProgramMode.LLM,
        output_parser=None,
    )
    assert llm.load_settings == {"n_ctx": 512, "verbose": False, "n_threads": 1}
    assert llm.messages_to_prompt is messages_to_prompt and llm.completion_to_prompt is completion_to_prompt
    assert llm.system_prompt == "Be brief." and llm.pydantic_program_mode == PydanticProgramMode.LLM


def test_lora_path_applies_the_adapter_to_every_call_unless_a_call_says_otherwise(
    model_path: Path, lora_paths: tuple[Path, Path]
) -> None:
    settings: dict[str, Any] = {
        "model_path": model_path,
        "temperature": 0.0,
        "max_new_tokens": 8,
        "model_kwargs": LOAD_SETTINGS,
    }
    base, tuned = LlamaCPP(**settings), LlamaCPP(**settings, lora_path=lora_paths[0])
    assert tuned.load_settings["lora_path"] == str(lora_paths[0])
    prompt = "1, 2, 3, 4,"
    assert tuned.complete(prompt, formatted=True).text != base.complete(prompt, formatted=True).text
    assert tuned.complete(prompt, formatted=True, lora={}).text == base.complete(prompt, formatted=True).text
    with pytest.warns(DeprecationWarning, match="lora_base"):
        LlamaCPP(model_path=model_path, lora_base="/base.gguf")


def test_missing_model_path_is_a_clear_error_at_first_use() -> None:
    llm = LlamaCPP()
    with pytest.raises(ValueError, match="model_path"):
        llm.complete("Hello")


def test_model_url_is_refused_because_nothing_is_downloaded() -> None:
    with pytest.raises(ValueError, match="model_url"):
        LlamaCPP(model_url="https://example.com/model.gguf")


def test_metadata_reports_the_loaded_context_window(model_path: Path) -> None:
    llm = LlamaCPP(model_path=model_path, max_new_tokens=2, model_kwargs=LOAD_SETTINGS)
    assert llm.metadata.context_window == 2000  # configured: not loaded yet
    llm.complete("Hello")
    loaded = shared_llama(model_path, llm.load_settings).n_ctx
    assert llm.metadata.context_window == loaded == 2048  # llama.cpp pads n_ctx to a multiple of 256


# -- the LLM interface -----------------------------------------------------------------------
def test_complete_continues_the_prompt(llm: LlamaCPP) -> None:
    response = llm.complete("One, two, three,")
    assert isinstance(response.text, str) and response.text
    assert response.raw["object"] == "text_completion"
    assert 0 < response.additional_kwargs["completion_tokens"] <= llm.max_new_tokens


def test_stream_complete_yields_deltas_that_add_up_to_the_text(llm: LlamaCPP) -> None:
    responses = list(llm.stream_complete("Monday, Tuesday,"))
    assert len(responses) > 1
    assert "".join(r.delta or "" for r in responses) == responses[-1].text


def test_chat_renders_messages_with_the_model_template(llm: LlamaCPP) -> None:
    messages = [ChatMessage(role=MessageRole.SYSTEM, content="Answer in one word."), *user("Name a colour.")]
    response = llm.chat(messages)
    assert response.message.role == MessageRole.ASSISTANT
    assert isinstance(response.message.content, str)
    assert [type(e) for e in response.raw["events"]][-2:] == [Finish, Usage]


def test_stream_chat_yields_deltas_that_add_up_to_the_message(llm: LlamaCPP) -> None:
    responses = list(llm.stream_chat(user("Count from one to five.")))
    assert responses
    assert "".join(r.delta or "" for r in responses) == responses[-1].message.content


def test_messages_to_prompt_formats_a_prompt_and_completes_it(model_path: Path) -> None:
    seen: list[Sequence[ChatMessage]] = []

    def messages_to_prompt(messages: Sequence[ChatMessage]) -> str:
        seen.append(messages)
        return f"Question: {messages[-1].content}\nAnswer:"

    llm = LlamaCPP(
        model_path=model_path,
        max_new_tokens=8,
        model_kwargs=LOAD_SETTINGS,
        messages_to_prompt=messages_to_prompt,
    )
    response = llm.chat(user("Where is Paris?"))
    assert [m.content for m in seen[0]] == ["Where is Paris?"]
    assert response.message.role == MessageRole.ASSISTANT
    assert response.raw["object"] == "text_completion"


async def test_acomplete_does_not_block_the_event_loop(llm: LlamaCPP) -> None:
    task = asyncio.create_task(llm.acomplete("One, two, three,"))
    await asyncio.sleep(0)  # the task starts and hands the decoding to a thread
    assert not task.done()  # a blocking implementation would already have finished here
    response = await task
    assert response.text


async def test_astream_chat_yields_deltas_that_add_up_to_the_message(llm: LlamaCPP) -> None:
    responses = [r async for r in await llm.astream_chat(user("Count from one to five."))]
    assert responses
    assert "".join(r.delta or "" for r in responses) == responses[-1].message.content


async def test_cancelling_an_astream_task_stops_decoding_and_the_model_answers_again(
    llm: LlamaCPP, model_path: Path
) -> None:
    engine = shared_llama(model_path, llm.load_settings).engine
    # No end-of-generation token allowed: without cancellation this runs for 1500 tokens.
    end_tokens = {engine.vocab.eos, *engine.vocab.tokenize("<end_of_turn>", False, True)}
    started = asyncio.Event()

    async def consume() -> None:
        stream = await llm.astream_complete(
            "One, two, three,", max_tokens=1500, logit_bias={token: -1e9 for token in end_tokens}
        )
        async for _ in stream:
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.wait_idle(timeout=60)  # the cancelled sequence is freed; nothing decodes behind it
    assert max(len(slot.tokens) for slot in engine.slots) < 1500  # what its slot holds: far from 1500

    answer = await llm.acomplete("One, two,", max_tokens=4)
    assert answer.text


# -- tool calling ------------------------------------------------------------------------------
def test_chat_with_tools_forced_choice_calls_the_named_tool(llm: LlamaCPP, multiply: RecordingTool) -> None:
    response = llm.chat_with_tools(
        [multiply.tool()], user_msg=QUESTION, tool_choice="multiply", **TOOL_TOKENS
    )
    [call] = llm.get_tool_calls_from_response(response)
    assert call.tool_name == "multiply"
    assert set(call.tool_kwargs) == {"a", "b"}
    assert all(isinstance(value, int) for value in call.tool_kwargs.values())


def test_stream_chat_with_tools_shows_the_call_growing_then_whole(
    llm: LlamaCPP, multiply: RecordingTool
) -> None:
    responses = list(
        llm.stream_chat_with_tools(
            [multiply.tool()], user_msg=QUESTION, tool_choice="multiply", **TOOL_TOKENS
        )
    )
    partial = [r for r in responses[:-1] if llm.get_tool_calls_from_response(r, error_on_no_tool_call=False)]
    assert len(partial) > 1, "the call is visible while its arguments stream"
    assert all(c.tool_name == "multiply" for r in partial for c in llm.get_tool_calls_from_response(r))
    [call] = llm.get_tool_calls_from_response(responses[-1])
    assert call.tool_name == "multiply" and set(call.tool_kwargs) == {"a", "b"}
    assert responses[-1].raw["finish_reason"] == "tool_calls"


def test_parallel_tool_calls_are_offered_when_allowed(llm: LlamaCPP, multiply: RecordingTool) -> None:
    def call(call_id: str, a: int, b: int) -> dict[str, Any]:
        arguments = json.dumps({"a": a, "b": b})
        return {"id": call_id, "type": "function", "function": {"name": "multiply", "arguments": arguments}}

    example = [  # one worked turn with two calls: what a 270M base model needs to see
        ChatMessage(role=MessageRole.USER, content="What is 2 times 3, and 4 times 5?"),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            content="",
            additional_kwargs={"tool_calls": [call("c1", 2, 3), call("c2", 4, 5)]},
        ),
    ]
    response = llm.chat_with_tools(
        [multiply.tool()],
        user_msg="What is 6 times 7, and 8 times 9?",
        chat_history=example,
        tool_required=True,
        allow_parallel_tool_calls=True,
        max_tokens=96,
    )
    calls = response.message.additional_kwargs["tool_calls"]
    assert len(calls) >= 2
    assert {call["function"]["name"] for call in calls} == {"multiply"}


def test_several_tool_calls_become_a_list_of_tool_selections(llm: LlamaCPP) -> None:
    message = ChatMessage(
        role=MessageRole.ASSISTANT,
        blocks=[
            ToolCallBlock(tool_call_id="call-1", tool_name="multiply", tool_kwargs={"a": 2, "b": 3}),
            ToolCallBlock(tool_call_id="call-2", tool_name="multiply", tool_kwargs='{"a": 4, "b": 5}'),
        ],
    )
    assert llm.get_tool_calls_from_response(ChatResponse(message=message)) == [
        ToolSelection(tool_id="call-1", tool_name="multiply", tool_kwargs={"a": 2, "b": 3}),
        ToolSelection(tool_id="call-2", tool_name="multiply", tool_kwargs={"a": 4, "b": 5}),
    ]


def test_chat_with_tools_auto_choice_answers_with_text_or_valid_calls(
    llm: LlamaCPP, multiply: RecordingTool
) -> None:
    response = llm.chat_with_tools([multiply.tool()], user_msg=QUESTION, **TOOL_TOKENS)
    selections = llm.get_tool_calls_from_response(response, error_on_no_tool_call=False)
    assert all(s.tool_name == "multiply" for s in selections)
    if not selections:
        assert isinstance(response.message.content, str)


def test_tool_choice_none_makes_no_call_and_asking_for_one_is_an_error(
    llm: LlamaCPP, multiply: RecordingTool
) -> None:
    response = llm.chat_with_tools([multiply.tool()], user_msg=QUESTION, tool_choice="none")
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(response)


def test_a_tool_call_cut_short_by_max_tokens_is_an_error(llm: LlamaCPP, multiply: RecordingTool) -> None:
    response = llm.chat_with_tools(
        [multiply.tool()], user_msg=QUESTION, tool_choice="multiply", max_tokens=10
    )
    with pytest.raises(ValueError, match="tool call|JSON object"):
        llm.get_tool_calls_from_response(response)


def test_tool_calls_and_results_go_back_to_the_model(
    llm: LlamaCPP, multiply: RecordingTool, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = llm.chat_with_tools([multiply.tool()], user_msg=QUESTION, tool_choice="multiply", **TOOL_TOKENS)
    [call] = llm.get_tool_calls_from_response(first)
    result = str(multiply.multiply(**call.tool_kwargs))
    history = [
        *user(QUESTION),
        first.message,
        ChatMessage(role=MessageRole.TOOL, content=result, additional_kwargs={"tool_call_id": call.tool_id}),
    ]
    llama = shared_llama(model_path, llm.load_settings)
    prompts: list[str] = []
    real_render = llama.render_chat

    def recording_render(messages: Any, **kwargs: Any) -> RenderedChat:
        rendered = real_render(messages, **kwargs)
        prompts.append(rendered.prompt)
        return rendered

    monkeypatch.setattr(llama, "render_chat", recording_render)
    answer = llm.chat_with_tools([multiply.tool()], chat_history=history, tool_choice="none")
    assert answer.message.role == MessageRole.ASSISTANT
    assert '"multiply"' in prompts[0] and result in prompts[0]


def test_predict_and_call_runs_the_tool_the_model_chose(llm: LlamaCPP, multiply: RecordingTool) -> None:
    output = llm.predict_and_call([multiply.tool()], user_msg=QUESTION, tool_choice="multiply", **TOOL_TOKENS)
    [source] = output.sources
    assert source.tool_name == "multiply" and not source.is_error
    [(a, b)] = multiply.calls
    assert output.response == str(a * b)


# llama-index-workflows inspects the agent's members, touching pydantic's deprecated attributes.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_function_agent_calls_a_python_tool(llm: LlamaCPP, multiply: RecordingTool) -> None:
    agent = FunctionAgent(
        tools=[multiply.tool(return_direct=True)],
        llm=llm,
        initial_tool_choice="multiply",
        system_prompt="You are a calculator. Use the multiply tool.",
    )
    result = await agent.run(QUESTION)
    assert multiply.calls, "the agent did not call the tool"
    assert str(result) in {str(a * b) for a, b in multiply.calls}


# -- structured output ---------------------------------------------------------------------------
def test_structured_predict_returns_a_valid_object(llm: LlamaCPP) -> None:
    person = llm.structured_predict(
        Person, PromptTemplate("Invent a person who lives in {city}."), llm_kwargs=TOOL_TOKENS, city="Paris"
    )
    assert isinstance(person, Person)
    assert len(person.name) <= 20 and 0 <= person.age <= 120


def test_structured_predict_cut_off_by_max_tokens_names_max_tokens(llm: LlamaCPP) -> None:
    with pytest.raises(OutputTruncatedError, match="max_tokens after 3 tokens"):
        llm.structured_predict(
            Person,
            PromptTemplate("Invent a person who lives in {city}."),
            llm_kwargs={"max_tokens": 3},
            city="Oslo",
        )


async def test_astructured_predict_returns_a_valid_object(llm: LlamaCPP) -> None:
    person = await llm.astructured_predict(
        Person, PromptTemplate("Invent a person who lives in {city}."), llm_kwargs=TOOL_TOKENS, city="Rome"
    )
    assert isinstance(person, Person)


def test_as_structured_llm_chat_carries_the_object(llm: LlamaCPP) -> None:
    response = llm.as_structured_llm(Person).chat(user("Invent a person."), **TOOL_TOKENS)
    assert isinstance(response.raw, Person)
    assert Person.model_validate_json(response.message.content or "") == response.raw


def test_stream_structured_predict_ends_with_the_whole_object(llm: LlamaCPP) -> None:
    partials = list(
        llm.stream_structured_predict(
            Person,
            PromptTemplate("Invent a person who lives in {city}."),
            llm_kwargs=TOOL_TOKENS,
            city="Oslo",
        )
    )
    assert len(partials) > 1
    Person.model_validate(partials[-1].model_dump())


# -- images ----------------------------------------------------------------------------------
def test_image_blocks_reach_the_model_through_its_projector(
    model_path: Path, projector_path: Path, tmp_path: Path
) -> None:
    llm = LlamaCPP(
        model_path=model_path, mmproj_path=projector_path, max_new_tokens=3, model_kwargs=LOAD_SETTINGS
    )
    assert llm.metadata.is_multi_modal  # type: ignore[attr-defined]
    image = noise_png(41)
    path = tmp_path / "picture.png"
    path.write_bytes(image)

    def ask(block: ImageBlock) -> ChatResponse:
        message = ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text=QUESTION), block])
        return llm.chat([message], temperature=0.0)

    first = ask(ImageBlock(image=image))
    second = ask(ImageBlock(path=path))
    assert first.raw is not None and second.raw is not None
    usage = second.raw["usage"]
    assert first.raw["usage"]["prompt_tokens"] == usage["prompt_tokens"] > TOKENS_PER_IMAGE
    # the same picture, given as bytes and then as a path: one prefix cache entry
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


def test_an_image_block_without_a_projector_says_to_load_one(llm: LlamaCPP) -> None:
    assert not llm.metadata.is_multi_modal  # type: ignore[attr-defined]
    message = ChatMessage(
        role=MessageRole.USER, blocks=[TextBlock(text=QUESTION), ImageBlock(image=noise_png(1))]
    )
    with pytest.raises(ValueError, match="mmproj_path"):
        llm.chat([message])
