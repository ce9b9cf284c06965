"""``POST /v1/messages`` and ``/v1/messages/count_tokens`` (Anthropic's Messages API) with the
``anthropic`` client and LangChain's ``ChatAnthropic``, on the real server.

Every reply whose content is asserted is forced by a grammar, or by a forced tool whose
only parameter is an enum, so the tests hold on any CPU.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import anthropic
import httpx
import httpx2
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from pydantic import BaseModel
from server_support import WEATHER_TOOL, RunningServer, first_event, metric_values, total, wait_for

from llamacpp_integrations.server.anthropic_messages import MessageRenderer, MessagesRequest, error_body
from llamacpp_integrations.server.chat_events import named_event
from llamacpp_integrations.server.errors import server_overloaded
from llamacpp_native.events import Event, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from mtmd_support import TOKENS_PER_IMAGE, noise_png

HELLO = {"grammar": 'root ::= "Hello there"'}
SAY_HELLO: Any = [{"role": "user", "content": "Say hello."}]
WEATHER: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL: Any = {
    "name": "get_weather",
    "description": WEATHER_TOOL["function"]["description"],
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
TIME_TOOL: Any = {
    "name": "get_time",
    "description": "The current time",
    "input_schema": {
        "type": "object",
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["zone"],
    },
}
KEY = "anthropic-test-key"


@pytest.fixture(scope="module")
def claude(server: RunningServer) -> anthropic.Anthropic:
    """The official Anthropic client, pointed at the main server."""
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def _check_weather_call(block: Any) -> None:
    assert block.type == "tool_use" and block.id
    assert block.name == "get_weather"
    assert block.input["unit"] in ("celsius", "fahrenheit")


def test_a_message_is_answered_in_anthropics_shape(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="any", max_tokens=16, messages=SAY_HELLO, extra_body=HELLO)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [
        ("text", "Hello there")
    ]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens > 0
    counted = claude.messages.count_tokens(model="any", messages=SAY_HELLO)
    assert _prompt_tokens(message.usage) == counted.input_tokens > 0


def _prompt_tokens(usage: Any) -> int:
    """All the prompt's tokens: Anthropic counts those read from the cache apart from ``input_tokens``."""
    return int(usage.input_tokens + (usage.cache_read_input_tokens or 0))


def test_a_repeated_prompt_reports_its_cached_tokens_as_anthropic_does(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="any", messages=SAY_HELLO).input_tokens
    claude.messages.create(model="any", max_tokens=4, messages=SAY_HELLO, extra_body=HELLO)
    again = claude.messages.create(model="any", max_tokens=4, messages=SAY_HELLO, extra_body=HELLO)
    assert again.usage.cache_read_input_tokens and again.usage.cache_read_input_tokens > 0
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens == counted


def test_the_stream_announces_the_prompt_tokens_in_message_start(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="any", messages=SAY_HELLO).input_tokens
    with claude.messages.stream(model="any", max_tokens=4, messages=SAY_HELLO, extra_body=HELLO) as stream:
        start = next(event for event in stream if event.type == "message_start")
        final = stream.get_final_message()
    assert start.message.usage.input_tokens == counted
    assert _prompt_tokens(final.usage) == counted


def test_the_system_prompt_may_be_text_or_blocks(claude: anthropic.Anthropic) -> None:
    def count(**system: Any) -> int:
        return claude.messages.count_tokens(model="any", messages=SAY_HELLO, **system).input_tokens

    as_text = count(system="Be brief.")
    assert as_text == count(system=[{"type": "text", "text": "Be brief."}])
    assert as_text > count()


def test_tool_choice_any_forces_a_tool_use(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="any", max_tokens=64, messages=WEATHER, tools=[TOOL], tool_choice={"type": "any"}
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    _check_weather_call(block)


def test_a_named_tool_choice_uses_that_tool(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="any",
        max_tokens=64,
        messages=WEATHER,
        tools=[TOOL, TIME_TOOL],
        tool_choice={"type": "tool", "name": "get_time"},
    )
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_time"
    assert block.input["zone"] in ("UTC", "CET")


def test_tool_choice_none_answers_in_text(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="any",
        max_tokens=16,
        messages=WEATHER,
        tools=[TOOL],
        tool_choice={"type": "none"},
        extra_body=HELLO,
    )
    assert [block.type for block in message.content] == ["text"]
    assert message.stop_reason == "end_turn"


def test_tool_use_and_tool_result_blocks_make_the_chat_prompt(
    claude: anthropic.Anthropic, client: openai.OpenAI
) -> None:
    messages: Any = [
        *WEATHER,
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"unit": "celsius"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    message = claude.messages.create(
        model="any", max_tokens=16, messages=messages, extra_body={"grammar": 'root ::= "Also 18."'}
    )
    assert message.content[0].type == "text" and message.content[0].text == "Also 18."
    call = {
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"unit": "celsius"}'},
    }
    chat: Any = [
        *WEATHER,
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 degrees"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    reply = client.chat.completions.create(
        model="any", messages=chat, max_tokens=2, extra_body={"grammar": 'root ::= "Ok"'}
    )
    assert reply.usage is not None and _prompt_tokens(message.usage) == reply.usage.prompt_tokens


def test_a_reply_cut_at_max_tokens_says_so(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="any", max_tokens=2, messages=SAY_HELLO, extra_body={"grammar": 'root ::= "1 2 3 4 5 6 7 8"'}
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


def test_a_stop_sequence_ends_the_text_and_is_named(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="any", max_tokens=16, messages=SAY_HELLO, stop_sequences=["xyz", " th"], extra_body=HELLO
    )
    assert message.content[0].type == "text" and message.content[0].text == "Hello"
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == " th"
    assert (
        _prompt_tokens(message.usage)
        == claude.messages.count_tokens(model="any", messages=SAY_HELLO).input_tokens
    )
    assert 0 < message.usage.output_tokens < 16


def test_the_stream_builds_the_same_message(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="any", max_tokens=16, messages=SAY_HELLO, extra_body=HELLO) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    ]
    assert len(deltas) > 1 and "".join(deltas) == "Hello there"
    assert final.content[0].type == "text" and final.content[0].text == "Hello there"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_a_streamed_tool_use_arrives_as_input_json_deltas(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="any", max_tokens=64, messages=WEATHER, tools=[TOOL], tool_choice={"type": "any"}
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    fragments = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(fragments) > 1
    [block] = final.content
    _check_weather_call(block)
    assert json.loads("".join(fragments)) == block.input
    assert final.stop_reason == "tool_use"


def test_a_streamed_stop_sequence_is_named_in_message_delta(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="any", max_tokens=16, messages=SAY_HELLO, stop_sequences=[" th"], extra_body=HELLO
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello"
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == " th"


def test_raw_events_have_anthropics_event_lines(http: httpx.Client) -> None:
    body = {"messages": SAY_HELLO, "max_tokens": 16, "stream": True, **HELLO}
    with http.stream("POST", "/v1/messages", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event:")]
    payloads = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data:")]
    assert names == [payload["type"] for payload in payloads]
    assert names[0] == "message_start" and names[-1] == "message_stop"


async def _cancelled_and_idle(http: httpx.AsyncClient) -> tuple[float, bool]:
    values = metric_values((await http.get("/metrics")).text)
    idle = total(values, "llamacpp_busy_slots") == 0 and total(values, "llamacpp_requests_in_flight") == 0
    return total(values, "llamacpp_requests_cancelled_total"), idle


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_leaving_frees_the_slot(server: RunningServer, stream: bool) -> None:
    body = {"messages": SAY_HELLO, "max_tokens": 1800, "ignore_eos": True, "stream": stream}
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        cancelled, _ = await _cancelled_and_idle(http)
        if stream:
            async with http.stream("POST", "/v1/messages", json=body) as response:
                assert json.loads(await first_event(response.aiter_lines()))["type"] == "message_start"
        else:
            request = asyncio.create_task(http.post("/v1/messages", json=body))

            async def generating() -> bool:
                values = metric_values((await http.get("/metrics")).text)
                return total(values, "llamacpp_busy_slots") >= 1

            await wait_for(generating, "the request generating")
            request.cancel()  # the client gives up: httpx closes the connection
            await asyncio.gather(request, return_exceptions=True)

        async def released() -> bool:
            now, idle = await _cancelled_and_idle(http)
            return idle and now == cancelled + 1

        await wait_for(released, "the slot and the model released, the request counted as cancelled")


def test_an_image_without_mmproj_is_a_clear_400(claude: anthropic.Anthropic) -> None:
    image = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(noise_png(1)).decode()}
    messages: Any = [{"role": "user", "content": [{"type": "image", "source": image}]}]
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(model="any", max_tokens=4, messages=messages)
    body: Any = raised.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "mmproj" in body["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": SAY_HELLO},  # max_tokens is required
        {"messages": SAY_HELLO, "max_tokens": "many"},
        {"messages": SAY_HELLO, "max_tokens": 0},
        {"messages": [], "max_tokens": 4},
        {"messages": "hello", "max_tokens": 4},
        {"messages": [{"role": "system", "content": "hi"}], "max_tokens": 4},
        {"messages": [{"role": "user", "content": [{"type": "document"}]}], "max_tokens": 4},
        {"messages": SAY_HELLO, "max_tokens": 4, "tools": [TOOL], "tool_choice": {"type": "sometimes"}},
        {"messages": SAY_HELLO, "max_tokens": 4, "tools": [TOOL], "tool_choice": {"type": "tool"}},
        {
            "messages": SAY_HELLO,
            "max_tokens": 4,
            "tools": [TOOL],
            "tool_choice": {"type": "tool", "name": "x"},
        },
        {"messages": SAY_HELLO, "max_tokens": 4, "tools": [{"name": "no_schema"}]},
        {"messages": SAY_HELLO, "max_tokens": 4, "thinking": {"type": "enabled", "budget_tokens": -1}},
        {"messages": SAY_HELLO, "max_tokens": 4, "stop_sequences": "stop"},
    ],
)
def test_bad_input_is_a_400_in_anthropics_shape(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["message"]


def test_a_body_that_is_not_json_is_a_400_in_anthropics_shape(http: httpx.Client) -> None:
    response = http.post(
        "/v1/messages/count_tokens", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.fixture(scope="module")
def keyed(start_server: Callable[..., RunningServer], model_path: Path) -> Iterator[RunningServer]:
    """A server with --api_key that serves only its model's own names."""
    server = start_server(
        "--model", str(model_path), "--api_key", KEY, "--strict_model_name", "--n_ctx", "512"
    )
    yield server
    server.stop()


def test_the_key_is_accepted_as_x_api_key_and_as_bearer(keyed: RunningServer, model_path: Path) -> None:
    body = {"model": model_path.name, "messages": SAY_HELLO}
    for headers in ({"x-api-key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        response = httpx.post(f"{keyed.url}/v1/messages/count_tokens", json=body, headers=headers)
        assert response.status_code == 200 and response.json()["input_tokens"] > 0
    client = anthropic.Anthropic(base_url=keyed.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        client.messages.count_tokens(model=model_path.name, messages=SAY_HELLO)
    body: Any = raised.value.body
    assert raised.value.status_code == 401
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert "x-api-key" in body["error"]["message"]


def test_an_unknown_model_is_a_404_not_found_error(keyed: RunningServer) -> None:
    client = anthropic.Anthropic(base_url=keyed.url, api_key=KEY, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(model="claude-unknown", max_tokens=4, messages=SAY_HELLO)
    body: Any = raised.value.body
    assert body["error"]["type"] == "not_found_error"


@pytest.fixture(scope="module")
def thinking(
    start_server: Callable[..., RunningServer], model_path: Path, chat_templates_dir: Path
) -> Iterator[anthropic.Anthropic]:
    """The default model behind a thinking model's template (Qwen3's)."""
    template = str(chat_templates_dir / "Qwen-Qwen3-0.6B.jinja")
    server = start_server("--model", str(model_path), "--chat_template_file", template, "--n_ctx", "1024")
    yield anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    server.stop()


THINK_AND_GREET = {"grammar": 'root ::= "<think>\\nA greeting.\\n</think>\\n\\nHello"'}


def test_thinking_is_a_thinking_block_before_the_text(thinking: anthropic.Anthropic) -> None:
    message = thinking.messages.create(
        model="any", max_tokens=40, messages=SAY_HELLO, extra_body=THINK_AND_GREET
    )
    first, second = message.content
    assert first.type == "thinking" and first.thinking.strip() == "A greeting."
    assert second.type == "text" and second.text == "Hello"


def test_thinking_streams_as_thinking_deltas(thinking: anthropic.Anthropic) -> None:
    with thinking.messages.stream(
        model="any", max_tokens=40, messages=SAY_HELLO, extra_body=THINK_AND_GREET
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    thoughts = [
        e.delta.thinking
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "thinking_delta"
    ]
    assert len(thoughts) > 1 and "".join(thoughts).strip() == "A greeting."
    assert [block.type for block in final.content] == ["thinking", "text"]


def test_thinking_disabled_tells_the_template(thinking: anthropic.Anthropic) -> None:
    default = thinking.messages.count_tokens(model="any", messages=SAY_HELLO).input_tokens
    disabled = thinking.messages.count_tokens(model="any", messages=SAY_HELLO, thinking={"type": "disabled"})
    assert disabled.input_tokens > default  # Qwen3's template closes an empty <think></think> in the prompt


def test_a_thinking_budget_is_accepted(thinking: anthropic.Anthropic) -> None:
    message = thinking.messages.create(
        model="any",
        max_tokens=40,
        messages=SAY_HELLO,
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body=THINK_AND_GREET,
    )
    assert [block.type for block in message.content] == ["thinking", "text"]


@pytest.fixture(scope="module")
def vision(
    start_server: Callable[..., RunningServer], model_path: Path, projector_path: Path
) -> Iterator[anthropic.Anthropic]:
    """The default model with the tiny test projector."""
    server = start_server("--model", str(model_path), "--mmproj", str(projector_path), "--n_ctx", "1024")
    yield anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    server.stop()


def test_a_base64_image_block_reaches_the_model_with_mmproj(vision: anthropic.Anthropic) -> None:
    image = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(noise_png(3)).decode()}
    question = {"type": "text", "text": "What is in this picture?"}
    with_image: Any = [{"role": "user", "content": [question, {"type": "image", "source": image}]}]
    text_only: Any = [{"role": "user", "content": [question]}]
    counted = vision.messages.count_tokens(model="any", messages=with_image).input_tokens
    assert (
        counted
        == vision.messages.count_tokens(model="any", messages=text_only).input_tokens + TOKENS_PER_IMAGE + 2
    )
    message = vision.messages.create(model="any", max_tokens=16, messages=with_image, extra_body=HELLO)
    assert _prompt_tokens(message.usage) == counted
    assert message.content[0].type == "text" and message.content[0].text == "Hello there"


class get_weather(BaseModel):  # noqa: N801 (the tool's name)
    """Current weather in the user's city."""

    unit: Literal["celsius", "fahrenheit"]


def _chat(server: RunningServer, **kwargs: Any) -> Any:
    return ChatAnthropic(model="any", base_url=server.url, api_key="unused", max_retries=0, **kwargs)


def test_chat_anthropic_invokes_and_streams(server: RunningServer) -> None:
    llm = _chat(server, max_tokens=16, model_kwargs={"extra_body": HELLO})
    reply = llm.invoke("Say hello.")
    assert reply.content == "Hello there"
    assert reply.usage_metadata["input_tokens"] > 0 and reply.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("Say hello."))
    assert len([c for c in chunks if c.content]) > 1
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == "Hello there"
    assert merged.usage_metadata["input_tokens"] == reply.usage_metadata["input_tokens"]


def test_chat_anthropic_bind_tools_with_a_tool_choice_calls_the_tool(server: RunningServer) -> None:
    llm = _chat(server, max_tokens=64).bind_tools([get_weather], tool_choice="get_weather")
    [call] = llm.invoke("What is the weather in Paris?").tool_calls
    assert call["name"] == "get_weather" and call["args"]["unit"] in ("celsius", "fahrenheit")
    chunks = list(llm.stream("What is the weather in Paris?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    [streamed] = merged.tool_calls
    assert streamed["name"] == "get_weather" and streamed["args"]["unit"] in ("celsius", "fahrenheit")


def _replayed(events: list[dict[str, Any]]) -> anthropic.Anthropic:
    """A client whose every request is answered with ``events`` as SSE (the renderer alone, no model)."""
    body = b"".join(named_event(event).encode() for event in events)

    def answer(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    http = httpx2.Client(transport=httpx2.MockTransport(answer))  # the anthropic client's own httpx
    return anthropic.Anthropic(base_url="http://replay", api_key="unused", max_retries=0, http_client=http)


def _rendered(
    batches: list[list[Event]], stops: list[str] | None = None
) -> tuple[MessageRenderer, list[dict[str, Any]]]:
    body = MessagesRequest(messages=SAY_HELLO, max_tokens=64, stop_sequences=stops)
    renderer = MessageRenderer.for_request(body, "m")
    events = renderer.start()
    for batch in batches:
        events += renderer.feed(batch)
    return renderer, events


def test_thinking_text_and_two_calls_render_four_blocks_the_client_accepts() -> None:
    renderer, events = _rendered(
        [
            [ReasoningDelta("Think"), ReasoningDelta("ing.")],
            [TextDelta("Calling.")],
            [ToolCallDelta(0, '{"unit":', id="call_a", name="get_weather")],
            [ToolCallDelta(0, ' "celsius"}')],
            [ToolCallDelta(1, '{"zone": "UTC"}', id="call_b", name="get_time")],
            [Finish("tool_calls"), Usage(10, 20)],
        ]
    )
    events += renderer.finish()
    with _replayed(events).messages.stream(model="m", max_tokens=64, messages=SAY_HELLO) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    calls = [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"]
    assert calls == [("call_a", "get_weather", {"unit": "celsius"}), ("call_b", "get_time", {"zone": "UTC"})]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 20)
    assert renderer.message["content"] == [block.model_dump(exclude_none=True) for block in final.content]


def test_text_held_back_as_a_possible_stop_sequence_is_sent_when_it_is_not_one() -> None:
    renderer, events = _rendered(
        [[TextDelta("Hel")], [TextDelta("lo")], [Finish("stop"), Usage(3, 2)]], ["Help"]
    )
    assert renderer.feed([]) == [] and not renderer.stopped
    events += renderer.finish()
    deltas = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == ["Hello"]
    assert renderer.message["content"] == [{"type": "text", "text": "Hello"}]
    assert renderer.message["stop_reason"] == "end_turn"


def test_an_error_after_the_stream_began_is_an_error_event() -> None:
    _, events = _rendered([[TextDelta("Hel")]])
    events.append(error_body(server_overloaded()))
    client = _replayed(events)
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(model="m", max_tokens=64, messages=SAY_HELLO) as stream,
    ):
        list(stream)
    body: Any = raised.value.body
    assert body["error"]["type"] == "overloaded_error"
