"""``POST /v1/responses`` (OpenAI's Responses API) with the official client, on the real server.

Every reply whose content is asserted is forced by a grammar, or by a forced tool whose
only parameter is an enum, so the tests hold on any CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_support import (
    WEATHER_TOOL,
    RunningServer,
    assert_openai_error,
    first_event,
    metric_values,
    total,
    wait_for,
)

from llamacpp_integrations.server.chat_events import named_event
from llamacpp_integrations.server.errors import APIError
from llamacpp_integrations.server.openai_responses import ResponseRenderer, ResponsesRequest
from llamacpp_native.events import Event, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage

HELLO = {"grammar": 'root ::= "Hello there"'}
WEATHER = "What is the weather in Paris?"
TOOL: Any = {"type": "function", **WEATHER_TOOL["function"]}  # the Responses' flat shape
TIME_TOOL: Any = {
    "type": "function",
    "name": "get_time",
    "description": "The current time",
    "parameters": {
        "type": "object",
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["zone"],
    },
}


def _check_weather_call(item: Any) -> None:
    assert item.type == "function_call"
    assert item.call_id and item.id and item.status == "completed"
    assert item.name == "get_weather"
    assert json.loads(item.arguments)["unit"] in ("celsius", "fahrenheit")


def _chat_prompt_tokens(client: openai.OpenAI, messages: list[dict[str, Any]]) -> int:
    """What the chat route counts for ``messages``: the same conversation must make the same prompt."""
    reply = client.chat.completions.create(
        model="any",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=2,
        extra_body={"grammar": 'root ::= "Ok"'},
    )
    assert reply.usage is not None
    return reply.usage.prompt_tokens


def test_a_string_input_gets_a_completed_response(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="any", input="Say hello.", max_output_tokens=16, extra_body=HELLO
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert [part.type for part in message.content] == ["output_text"]
    assert response.output_text == "Hello there"
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_instructions_and_input_items_make_the_chat_prompt(client: openai.OpenAI) -> None:
    items: Any = [
        {"role": "user", "content": "Hi."},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": WEATHER}]},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"unit":"celsius"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "18 degrees and sunny"},
    ]
    response = client.responses.create(
        model="any",
        instructions="Be brief.",
        input=items,
        tools=[TOOL],
        tool_choice="none",
        max_output_tokens=4,
        extra_body={"grammar": 'root ::= "Ok"'},
    )
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"unit":"celsius"}'},
    }
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": WEATHER},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    assert response.output_text == "Ok"
    assert response.usage is not None
    assert response.usage.input_tokens == _chat_prompt_tokens(client, chat)


def test_input_tokens_counts_the_prompt_a_response_would_use(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    body = {"instructions": "Be brief.", "input": "Hello world"}
    counted = client.responses.input_tokens.count(model="any", **body)
    assert counted.object == "response.input_tokens"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}]
    assert counted.input_tokens == _chat_prompt_tokens(client, chat)
    unversioned = http.post("/responses/input_tokens", json=body)
    assert unversioned.json() == {"object": "response.input_tokens", "input_tokens": counted.input_tokens}


def test_input_tokens_after_an_unknown_previous_response_is_a_400(http: httpx.Client) -> None:
    body = {"input": "Hi", "previous_response_id": "resp_unknown"}
    assert_openai_error(http.post("/v1/responses/input_tokens", json=body), 400)


def test_tool_choice_required_forces_a_function_call(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="any",
        input=WEATHER,
        tools=[TOOL],
        tool_choice="required",
        max_output_tokens=64,
    )
    assert response.status == "completed"
    [call] = response.output
    _check_weather_call(call)


def test_a_named_tool_choice_calls_that_function(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="any",
        input=WEATHER,
        tools=[TOOL, TIME_TOOL],
        tool_choice={"type": "function", "name": "get_time"},
        max_output_tokens=64,
    )
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_time"
    assert json.loads(call.arguments)["zone"] in ("UTC", "CET")


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="any",
        input=WEATHER,
        tools=[TOOL],
        tool_choice="none",
        max_output_tokens=16,
        extra_body=HELLO,
    )
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == "Hello there"


def test_a_json_schema_text_format_shapes_the_text(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model="any",
        input="Is the sky blue?",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
        max_output_tokens=128,  # room for every space the JSON grammar allows
    )
    assert json.loads(response.output_text)["answer"] in ("yes", "no")
    assert response.text is not None and response.text.format.type == "json_schema"


def test_a_reply_cut_at_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="any", input="Count.", max_output_tokens=2, extra_body={"grammar": 'root ::= "1 2 3 4 5 6 7 8"'}
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"


def test_the_stream_passes_the_clients_event_checks(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="any", input="Say hello.", max_output_tokens=16, extra_body=HELLO
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1, "the text streams in pieces"
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(deltas) == final.output_text == "Hello there"
    assert events[0].response.id == final.id  # type: ignore[union-attr]


def test_a_streamed_function_call_arrives_as_argument_deltas(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="any",
        input=WEATHER,
        tools=[TOOL],
        tool_choice="required",
        max_output_tokens=64,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(deltas) > 1
    assert "".join(deltas) == done.arguments
    [call] = final.output
    _check_weather_call(call)
    assert call.arguments == done.arguments


def test_raw_events_are_named_and_numbered(http: httpx.Client) -> None:
    body = {"input": "Say hello.", "max_output_tokens": 16, "stream": True, **HELLO}
    with http.stream("POST", "/v1/responses", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event:")]
    payloads = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data:")]
    assert names == [payload["type"] for payload in payloads]
    assert names[0] == "response.created" and names[-1] == "response.completed"


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model="any", input="Say hello.", max_output_tokens=16, extra_body=HELLO)
    second = client.responses.create(
        model="any",
        input="Again.",
        previous_response_id=first.id,
        max_output_tokens=4,
        extra_body={"grammar": 'root ::= "Ok"'},
    )
    assert second.previous_response_id == first.id
    conversation = [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "Again."},
    ]
    assert second.usage is not None
    assert second.usage.input_tokens == _chat_prompt_tokens(client, conversation)
    assert client.responses.retrieve(second.id).output_text == "Ok"


def test_a_function_call_output_answers_a_previous_call(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="any",
        input=WEATHER,
        tools=[TOOL],
        tool_choice="required",
        max_output_tokens=64,
    )
    [call] = first.output
    assert call.type == "function_call"
    second = client.responses.create(
        model="any",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}],
        tools=[TOOL],
        max_output_tokens=24,
        extra_body={"grammar": 'root ::= "It is 18 degrees."'},
    )
    assert second.output_text == "It is 18 degrees."


def test_a_response_with_store_false_is_not_kept(client: openai.OpenAI, http: httpx.Client) -> None:
    response = client.responses.create(
        model="any", input="Say hello.", store=False, max_output_tokens=16, extra_body=HELLO
    )
    assert_openai_error(http.get(f"/v1/responses/{response.id}"), 404)
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(
            model="any", input="Again.", previous_response_id=response.id, max_output_tokens=2
        )
    assert raised.value.code == "previous_response_not_found"


async def _cancelled_and_idle(http: httpx.AsyncClient) -> tuple[float, bool]:
    values = metric_values((await http.get("/metrics")).text)
    idle = total(values, "llamacpp_busy_slots") == 0 and total(values, "llamacpp_requests_in_flight") == 0
    return total(values, "llamacpp_requests_cancelled_total"), idle


async def test_closing_the_stream_frees_the_slot(server: RunningServer) -> None:
    body = {"input": "Write a long story.", "max_output_tokens": 1800, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        cancelled, _ = await _cancelled_and_idle(http)
        async with http.stream("POST", "/v1/responses", json=body) as response:
            lines = response.aiter_lines()
            assert json.loads(await first_event(lines))["type"] == "response.created"
        # leaving the block closed the connection mid-stream

        async def released() -> bool:
            now, idle = await _cancelled_and_idle(http)
            return idle and now == cancelled + 1

        await wait_for(released, "the slot and the model released, the request counted as cancelled")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 5}, "input"),
        ({"input": [{"type": "web_search_call"}]}, "input.0"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input.0.message.role"),
        ({"input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "hi", "previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"input": []}, "input"),
    ],
)
def test_bad_input_is_a_400_in_openais_shape(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    error = assert_openai_error(http.post("/v1/responses", json=body), 400)
    assert error["param"] == param


def test_an_unknown_named_tool_is_a_400(http: httpx.Client) -> None:
    body = {"input": "hi", "tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}
    assert_openai_error(http.post("/v1/responses", json=body), 400)


@pytest.fixture(scope="module")
def thinking(
    start_server: Callable[..., RunningServer], model_path: Path, chat_templates_dir: Path
) -> Iterator[openai.OpenAI]:
    """The default model behind a thinking model's template (Qwen3's)."""
    template = str(chat_templates_dir / "Qwen-Qwen3-0.6B.jinja")
    server = start_server("--model", str(model_path), "--chat_template_file", template, "--n_ctx", "1024")
    yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    server.stop()


THINK_AND_GREET = {"grammar": 'root ::= "<think>\\nA greeting.\\n</think>\\n\\nHello"'}


def test_thinking_is_a_reasoning_item_before_the_message(thinking: openai.OpenAI) -> None:
    response = thinking.responses.create(
        model="any", input="Say hello.", max_output_tokens=40, extra_body=THINK_AND_GREET
    )
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.summary == []
    assert reasoning.content is not None
    assert "".join(part.text for part in reasoning.content).strip() == "A greeting."
    assert message.type == "message" and response.output_text == "Hello"


def test_thinking_streams_as_reasoning_text_deltas(thinking: openai.OpenAI) -> None:
    with thinking.responses.stream(
        model="any", input="Say hello.", max_output_tokens=40, extra_body=THINK_AND_GREET
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    reasoning = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    assert len(reasoning) > 1 and "".join(reasoning).strip() == "A greeting."
    [done] = [e for e in events if e.type == "response.reasoning_text.done"]
    assert done.text == "".join(reasoning)
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "Hello"


def _replayed(events: list[dict[str, Any]]) -> openai.OpenAI:
    """A client whose every request is answered with ``events`` as SSE (the renderer alone, no model)."""
    body = b"".join(named_event(event).encode() for event in events)

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    http = httpx.Client(transport=httpx.MockTransport(answer))
    return openai.OpenAI(base_url="http://replay/v1", api_key="unused", max_retries=0, http_client=http)


def _rendered(batches: list[list[Event]]) -> tuple[ResponseRenderer, list[dict[str, Any]]]:
    renderer = ResponseRenderer.for_request(ResponsesRequest(input="hi", tools=[TOOL, TIME_TOOL]), "m")
    events = renderer.start()
    for batch in batches:
        events += renderer.feed(batch)
    return renderer, events


def test_thinking_text_and_two_calls_render_four_items_the_client_accepts() -> None:
    renderer, events = _rendered(
        [
            [ReasoningDelta("Think"), ReasoningDelta("ing.")],
            [TextDelta("Calling.")],
            [ToolCallDelta(0, '{"unit":', id="call_a", name="get_weather")],
            [ToolCallDelta(0, ' "celsius"}')],
            [ToolCallDelta(1, '{"zone": "UTC"}', id="call_b", name="get_time")],
            [Finish("tool_calls"), Usage(10, 20, cached_tokens=4)],
        ]
    )
    events += renderer.finish()
    with _replayed(events).responses.stream(model="m", input="hi") as stream:
        seen = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in seen] == list(range(len(events)))
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert final.output_text == "Calling."
    calls = [(item.call_id, item.name, json.loads(item.arguments)) for item in final.output[2:]]
    assert calls == [("call_a", "get_weather", {"unit": "celsius"}), ("call_b", "get_time", {"zone": "UTC"})]
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 4
    assert renderer.messages()[0]["tool_calls"][1]["function"]["name"] == "get_time"


def test_an_error_after_the_stream_began_is_a_response_failed_event() -> None:
    renderer, events = _rendered([[TextDelta("Hel")]])
    events += renderer.fail(APIError(503, "The server is shutting down", "server_error"))
    with _replayed(events).responses.stream(model="m", input="hi") as stream:
        seen = list(stream)
    failed = seen[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed" and failed.response.output == []
    assert (
        failed.response.error is not None and failed.response.error.message == "The server is shutting down"
    )
