"""Thinking over HTTP: ``reasoning_content`` in messages and deltas, the thinking controls, their 400s."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_support import RunningServer, assert_openai_error

HELLO = [{"role": "user", "content": "Say hello."}]
THINK_AND_GREET = {"grammar": 'root ::= "<think>\\nA greeting.\\n</think>\\n\\nHello"'}


@pytest.fixture(scope="module")
def thinking_server(
    start_server: Callable[..., RunningServer], model_path: Path, chat_templates_dir: Path
) -> Iterator[RunningServer]:
    """The default model behind a thinking model's template (Qwen3's), from --chat_template_file."""
    template = str(chat_templates_dir / "Qwen-Qwen3-0.6B.jinja")
    server = start_server("--model", str(model_path), "--chat_template_file", template, "--n_ctx", "1024")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def thinking(thinking_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{thinking_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_reasoning_streams_as_reasoning_content_deltas(thinking: openai.OpenAI) -> None:
    stream = thinking.chat.completions.create(
        model="any",
        messages=HELLO,
        max_tokens=40,
        stream=True,
        extra_body=THINK_AND_GREET,  # type: ignore[arg-type]
    )
    deltas: list[Any] = [c.choices[0].delta for c in stream if c.choices]
    reasoning = [d.model_extra.get("reasoning_content") for d in deltas if d.model_extra]
    assert len([r for r in reasoning if r]) > 1
    assert "".join(r for r in reasoning if r).strip() == "A greeting."
    assert "".join(d.content or "" for d in deltas) == "Hello"


def test_the_whole_message_carries_reasoning_content(thinking: openai.OpenAI) -> None:
    reply = thinking.chat.completions.create(
        model="any",
        messages=HELLO,
        max_tokens=40,
        extra_body=THINK_AND_GREET,  # type: ignore[arg-type]
    )
    message = reply.choices[0].message
    assert message.content == "Hello"
    assert (message.model_extra or {})["reasoning_content"].strip() == "A greeting."


def test_reasoning_format_none_keeps_the_thinking_in_the_content(thinking: openai.OpenAI) -> None:
    reply = thinking.chat.completions.create(
        model="any",
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=40,
        extra_body={**THINK_AND_GREET, "reasoning_format": "none"},
    )
    assert (reply.choices[0].message.content or "").startswith("<think>")


@pytest.mark.parametrize(
    "extra",
    [
        {"reasoning_format": "verbose"},
        {"reasoning_budget": -1},
        {"thinking_budget_tokens": "many"},
        {"chat_template_kwargs": {"enable_thinking": "no"}},
        {"chat_template_kwargs": ["enable_thinking"]},
    ],
)
def test_bad_thinking_controls_are_400(thinking_server: RunningServer, extra: dict[str, Any]) -> None:
    body = {"messages": HELLO, "max_tokens": 4, **extra}
    response = httpx.post(f"{thinking_server.url}/v1/chat/completions", json=body, timeout=60)
    assert_openai_error(response, 400)
    ok = httpx.post(f"{thinking_server.url}/v1/chat/completions", json={**body, **{k: None for k in extra}})
    assert ok.status_code == 200


def test_a_missing_chat_template_file_stops_the_server_at_start(tmp_path: Path, model_path: Path) -> None:
    from llamacpp_integrations.server.settings import parse_settings

    with pytest.raises(SystemExit):
        parse_settings(["--model", str(model_path), "--chat_template_file", str(tmp_path / "nope.jinja")])


@pytest.fixture(scope="module")
def not_thinking_server(
    start_server: Callable[..., RunningServer], model_path: Path, chat_templates_dir: Path
) -> Iterator[RunningServer]:
    """Qwen3's template with ``--reasoning off`` (llama-server's flag): thinking off unless asked for."""
    template = str(chat_templates_dir / "Qwen-Qwen3-0.6B.jinja")
    flags = ["--chat_template_file", template, "--n_ctx", "1024", "--reasoning", "off"]
    server = start_server("--model", str(model_path), *flags)
    yield server
    server.stop()


QWEN3_TURN = "<|im_start|>assistant\n"
EMPTY_THINKING = "<think>\n\n</think>\n\n"
"""What Qwen3's template puts after the assistant's opening when ``enable_thinking`` is false."""


def _prompt(server: RunningServer, **extra: Any) -> str:
    response = httpx.post(f"{server.url}/apply-template", json={"messages": HELLO, **extra}, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["prompt"])


def test_reasoning_off_closes_the_thinking_unless_a_request_asks_for_it(
    not_thinking_server: RunningServer, thinking_server: RunningServer
) -> None:
    assert _prompt(not_thinking_server).endswith(QWEN3_TURN + EMPTY_THINKING)
    thinking_asked = _prompt(not_thinking_server, chat_template_kwargs={"enable_thinking": True})
    assert thinking_asked.endswith(QWEN3_TURN)  # the request's own kwargs win over the flag
    assert _prompt(thinking_server).endswith(QWEN3_TURN)  # the default (auto): the template decides


def test_reasoning_off_reaches_the_chat_route(not_thinking_server: RunningServer) -> None:
    url = f"{not_thinking_server.url}/v1/chat/completions"
    body = {"messages": HELLO, "max_tokens": 1}
    closed = httpx.post(url, json=body, timeout=120).json()["usage"]["prompt_tokens"]
    asked = {**body, "chat_template_kwargs": {"enable_thinking": True}}
    opened = httpx.post(url, json=asked, timeout=120).json()["usage"]["prompt_tokens"]
    assert closed > opened  # the empty thinking block is part of the prompt


@pytest.mark.parametrize(("given", "read"), [("on", "on"), ("true", "on"), ("0", "off"), ("auto", "auto")])
def test_reasoning_flag_values(model_path: Path, given: str, read: str) -> None:
    from llamacpp_integrations.server.settings import parse_settings

    assert parse_settings(["--model", str(model_path), "--reasoning", given]).reasoning == read


def test_an_unknown_reasoning_value_stops_the_server_at_start(model_path: Path) -> None:
    from llamacpp_integrations.server.settings import parse_settings

    with pytest.raises(SystemExit):
        parse_settings(["--model", str(model_path), "--reasoning", "sometimes"])


LIST_TOOL = {
    "type": "function",
    "function": {
        "name": "list_files",
        "description": "List files",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}
EARLIER_THINKING = "The folder listing comes first."


def test_earlier_reasoning_content_reaches_the_template(thinking_server: RunningServer) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "list_files", "arguments": '{"path": "."}'},
    }
    messages = [
        {"role": "user", "content": "Fix the bug."},
        {"role": "assistant", "content": "", "reasoning_content": EARLIER_THINKING, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "main.py"},
    ]
    assert EARLIER_THINKING in _prompt(thinking_server, messages=messages, tools=[LIST_TOOL])


def test_earlier_anthropic_thinking_blocks_reach_the_template(thinking_server: RunningServer) -> None:
    def count(thinking: list[dict[str, Any]]) -> int:
        use = {"type": "tool_use", "id": "toolu_1", "name": "list_files", "input": {"path": "."}}
        body = {
            "model": "any",
            "tools": [{"name": "list_files", "input_schema": LIST_TOOL["function"]["parameters"]}],  # type: ignore[index]
            "messages": [
                {"role": "user", "content": "Fix the bug."},
                {"role": "assistant", "content": [*thinking, use]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "main.py"}],
                },
            ],
        }
        response = httpx.post(f"{thinking_server.url}/v1/messages/count_tokens", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return int(response.json()["input_tokens"])

    block = {"type": "thinking", "thinking": EARLIER_THINKING, "signature": ""}
    assert count([block]) > count([])
