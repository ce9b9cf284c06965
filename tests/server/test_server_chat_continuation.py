"""Assistant prefill over HTTP: a chat ending with the assistant's message is continued.

As llama-server does by default, and as vLLM's ``continue_final_message`` and Anthropic's
prefill ask; the reply holds only what the model adds (as vLLM and Anthropic return it).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from server_support import assert_openai_error

QUESTION = {"role": "user", "content": "Name a famous book."}
PREFILL = {"role": "assistant", "content": "The most famous book is"}
GREEDY = {"temperature": 0, "max_tokens": 6}


def test_a_prefilled_chat_continues_the_assistant_turn(http: httpx.Client) -> None:
    prompt = http.post("/apply-template", json={"messages": [QUESTION, PREFILL]}).json()["prompt"]
    assert prompt.endswith("<start_of_turn>model\nThe most famous book is")
    reply = http.post(
        "/v1/chat/completions", json={"messages": [QUESTION, PREFILL], **GREEDY, "verbose": True}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["__verbose"]["prompt"] == prompt
    completion = http.post("/v1/completions", json={"prompt": prompt, **GREEDY}).json()
    assert body["choices"][0]["message"]["content"] == completion["choices"][0]["text"]


def test_continue_final_message_is_vllms_explicit_spelling(http: httpx.Client) -> None:
    implicit = http.post("/apply-template", json={"messages": [QUESTION, PREFILL]}).json()["prompt"]
    explicit = http.post(
        "/apply-template",
        json={
            "messages": [QUESTION, PREFILL],
            "continue_final_message": True,
            "add_generation_prompt": False,
        },
    ).json()["prompt"]
    closed = http.post(
        "/apply-template", json={"messages": [QUESTION, PREFILL], "continue_final_message": False}
    ).json()["prompt"]
    assert explicit == implicit
    assert closed.startswith(implicit) and closed.endswith("<start_of_turn>model\n")


@pytest.mark.parametrize(
    ("extra", "messages"),
    [
        ({"continue_final_message": True, "add_generation_prompt": True}, [QUESTION, PREFILL]),
        ({"continue_final_message": True}, [QUESTION]),
        ({"continue_final_message": "everything"}, [QUESTION, PREFILL]),
    ],
    ids=["both asked", "nothing to continue", "unknown part"],
)
def test_what_cannot_be_continued_is_a_400(
    http: httpx.Client, extra: dict[str, Any], messages: list[dict[str, Any]]
) -> None:
    for route in ("/v1/chat/completions", "/apply-template"):
        assert_openai_error(http.post(route, json={"messages": messages, "max_tokens": 2, **extra}), 400)


def test_an_anthropic_prefill_gets_only_the_continuation(http: httpx.Client) -> None:
    body = {"model": "any", "max_tokens": 6, "temperature": 0, "messages": [QUESTION, PREFILL]}
    reply = http.post("/v1/messages", json=body)
    assert reply.status_code == 200, reply.text
    text = "".join(block["text"] for block in reply.json()["content"] if block["type"] == "text")
    chat = http.post("/v1/chat/completions", json={"messages": [QUESTION, PREFILL], **GREEDY}).json()
    assert text == chat["choices"][0]["message"]["content"]


def test_a_strict_schema_checks_the_prefill_and_the_continuation_together(http: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 12}},
        "required": ["title"],
        "additionalProperties": False,
    }
    opening = '{"title": "'
    body = {
        "messages": [QUESTION, {"role": "assistant", "content": opening}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "book", "strict": True, "schema": schema},
        },
        "max_tokens": 40,
        "temperature": 0,
    }
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    content = reply.json()["choices"][0]["message"]["content"]
    assert not content.startswith(opening)
    assert set(json.loads(opening + content)) == {"title"}
