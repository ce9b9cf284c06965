"""Every error in OpenAI's shape, with the right status: 400 (never 422), 404, 413 and 405."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_support import RunningServer, assert_openai_error

HELLO = [{"role": "user", "content": "Hello"}]
TOO_LONG = "hello " * 2500
"""Far over the 2048-token context."""


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"max_tokens": 2}, "messages", id="missing messages"),
        pytest.param({"messages": "hello"}, "messages", id="messages not a list"),
        pytest.param({"messages": []}, "messages", id="no messages"),
        pytest.param(
            {"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", id="unknown role"
        ),
        pytest.param({"messages": HELLO, "max_tokens": "many"}, "max_tokens", id="max_tokens not a number"),
        pytest.param({"messages": HELLO, "temperature": [1]}, "temperature", id="temperature a list"),
        pytest.param({"messages": HELLO, "n": 0}, "n", id="n below 1"),
        pytest.param({"messages": HELLO, "logit_bias": {"cat": 5}}, "logit_bias.cat", id="logit_bias key"),
        pytest.param({"messages": HELLO, "stream": "yes please"}, "stream", id="stream not a bool"),
        pytest.param({"messages": HELLO, "top_logprobs": 99}, "top_logprobs", id="top_logprobs over 20"),
        pytest.param(
            {"messages": [{"role": "user", "content": 5}]}, "messages.0.content", id="content a number"
        ),
        pytest.param({"messages": HELLO, "stop": 5}, "stop", id="stop a number"),
        pytest.param({"messages": HELLO, "top_logprobs": 2}, None, id="top_logprobs without logprobs"),
        pytest.param(
            {"messages": HELLO, "logprobs": False, "top_logprobs": 2}, None, id="top_logprobs, logprobs false"
        ),
        pytest.param(
            {"messages": [*HELLO, *[{"role": "assistant", "content": "a"}] * 2]},
            "messages",
            id="two assistant turns at the end",
        ),
        pytest.param(
            {"messages": HELLO, "tool_choice": "sometimes"}, "tool_choice", id="tool_choice unknown"
        ),
    ],
)
def test_invalid_chat_requests_are_400_naming_the_field(
    http: httpx.Client, model_name: str, body: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(http.post("/v1/chat/completions", json={"model": model_name, **body}), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"messages": [', id="truncated JSON"),
        pytest.param(b"[1, 2, 3]", id="not an object"),
        pytest.param(b"", id="empty body"),
        pytest.param(b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', id="NaN"),
    ],
)
def test_malformed_bodies_are_400(http: httpx.Client, content: bytes) -> None:
    response = http.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 400)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"grammar": "root ::= ("}, id="bad grammar"),
        pytest.param(
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
            id="bad json schema",
        ),
        pytest.param({"response_format": {"type": "json_schema"}}, id="json_schema without schema"),
        pytest.param(
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            id="tool_choice names an unknown tool",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            id="image content",
        ),
        pytest.param({"logit_bias": {"99999999": 1}}, id="logit_bias token outside the vocabulary"),
        pytest.param({"top_p": 7}, id="top_p above 1"),
    ],
)
def test_requests_the_engine_refuses_are_400(
    http: httpx.Client, model_name: str, extra: dict[str, Any]
) -> None:
    body = {"model": model_name, "messages": HELLO, "max_tokens": 2, **extra}
    assert_openai_error(http.post("/v1/chat/completions", json=body), 400)


@pytest.mark.parametrize("prompt", [[], [[]], [[1], []]], ids=["no prompt", "no token", "an empty prompt"])
def test_completions_need_a_prompt(http: httpx.Client, model_name: str, prompt: list[Any]) -> None:
    response = http.post("/v1/completions", json={"model": model_name, "prompt": prompt, "max_tokens": 2})
    assert_openai_error(response, 400)


def test_a_server_of_one_model_answers_to_any_model_name(client: openai.OpenAI) -> None:
    served = client.models.list().data[0].id
    result = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    assert result.model == served and result.choices[0].message.content is not None


def test_strict_model_names_make_an_unknown_model_404(
    start_server: Callable[..., RunningServer], model_path: Path
) -> None:
    server = start_server("--model", str(model_path), "--strict_model_name")
    strict = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError) as caught:
            strict.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    finally:
        server.stop()
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/completions"])
def test_a_prompt_over_the_context_is_400_before_any_stream_byte(
    http: httpx.Client, model_name: str, endpoint: str, stream: bool
) -> None:
    body: dict[str, Any] = {"model": model_name, "max_tokens": 4, "stream": stream}
    if endpoint == "/v1/completions":
        body["prompt"] = TOO_LONG
    else:
        body["messages"] = [{"role": "user", "content": TOO_LONG}]
    error = assert_openai_error(http.post(endpoint, json=body), 400, "context_length_exceeded")
    assert error["type"] == "exceed_context_size_error"  # llama-server's type; the code is OpenAI's
    assert error["n_prompt_tokens"] > error["n_ctx"] == 2048  # one request may fill the shared context


def test_a_declared_body_over_the_limit_is_413_unread(server: RunningServer) -> None:
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        "Content-Length: 20000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as connection:
        connection.sendall(head.encode() + b'{"messages": "')  # a start; the rest never comes
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413"
    assert b'"code":"request_too_large"' in rest


def test_a_chunked_body_over_the_limit_is_413(http: httpx.Client) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: sent chunked, counted as it arrives
        for _ in range(10):
            yield b" " * 1_000_000
        yield b" "

    response = http.post("/v1/chat/completions", content=body(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413, "request_too_large")


def test_unknown_paths_and_methods_keep_the_error_shape(http: httpx.Client) -> None:
    assert_openai_error(http.get("/v1/nothing-here"), 404)
    assert_openai_error(http.get("/v1/chat/completions"), 405)
