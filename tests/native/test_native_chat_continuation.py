"""Continuing the last assistant turn: the prompt ends inside it, the reply holds only what is added."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llamacpp_native import Llama
from llamacpp_native.binding._library import lib
from llamacpp_native.chat.continuation import Opening
from llamacpp_native.chat.templates import ChatTemplates
from llamacpp_native.engine.events import Event, ReasoningDelta, TextDelta
from llamacpp_native.engine.output import ReplyParser

QUESTION = {"role": "user", "content": "Name a famous book."}
PREFILL = {"role": "assistant", "content": "The most famous book is"}


def test_a_last_assistant_message_is_continued_not_closed(llama: Llama) -> None:
    rendered = llama.render_chat([QUESTION, PREFILL])
    assert rendered.prompt.endswith("<start_of_turn>model\nThe most famous book is")
    assert rendered.opening == Opening("", "The most famous book is", in_reasoning=False)


@pytest.mark.parametrize(
    "options", [{"continue_final_message": False}, {"add_generation_prompt": True}], ids=str
)
def test_a_client_can_close_the_last_assistant_turn_instead(llama: Llama, options: dict[str, Any]) -> None:
    rendered = llama.render_chat([QUESTION, PREFILL], **options)
    assert rendered.prompt.endswith("The most famous book is<end_of_turn>\n<start_of_turn>model\n")
    assert rendered.opening is None


def test_text_parts_of_the_continued_turn_are_joined_by_a_blank_line(llama: Llama) -> None:
    parts = {
        "role": "assistant",
        "content": [{"type": "text", "text": "Wh"}, {"type": "text", "text": "ill"}],
    }
    rendered = llama.render_chat([QUESTION, parts], continue_final_message=True, add_generation_prompt=False)
    assert rendered.prompt.endswith("<start_of_turn>model\nWh\n\nill")


def test_the_reply_holds_only_what_the_model_adds(llama: Llama) -> None:
    rendered = llama.render_chat([QUESTION, PREFILL])
    prompt = llama.chat_request(rendered).prompt_tokens
    plain = llama.create_completion(prompt, max_tokens=6, temperature=0.0)
    chat = llama.create_chat_completion([QUESTION, PREFILL], max_tokens=6, temperature=0.0)
    assert isinstance(plain, dict) and isinstance(chat, dict)
    assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
    assert chat["usage"]["prompt_tokens"] == len(prompt)


def test_a_json_reply_continues_the_prefilled_json(llama: Llama, json_prefix: Callable[[str], bool]) -> None:
    opening = '{"title": "'
    messages = [{"role": "user", "content": "A book as JSON."}, {"role": "assistant", "content": opening}]
    chunks = llama.create_chat_completion(
        messages, max_tokens=10, temperature=0.0, response_format={"type": "json_object"}, stream=True
    )
    added = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert added and not added.startswith(opening)
    assert json_prefix(opening + added)


@pytest.mark.parametrize(
    ("messages", "options", "message"),
    [
        ([QUESTION, PREFILL], {"continue_final_message": True, "add_generation_prompt": True}, "both"),
        ([QUESTION], {"continue_final_message": True}, "the assistant's"),
        ([QUESTION, PREFILL, PREFILL], {}, "two assistant turns"),
        ([QUESTION, PREFILL], {"continue_final_message": "everything"}, "continue_final_message must"),
        (
            [
                QUESTION,
                {
                    **PREFILL,
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
            ],
            {"continue_final_message": True},
            "tool calls",
        ),
    ],
    ids=["both asked", "no assistant turn", "two assistant turns", "unknown part", "tool calls"],
)
def test_what_cannot_be_continued_is_refused_clearly(
    llama: Llama, messages: list[dict[str, Any]], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        llama.create_chat_completion(messages, max_tokens=1, **options)
    assert llama.create_chat_completion([QUESTION], max_tokens=1)  # still usable


@pytest.fixture(scope="module")
def thinking_templates(llama: Llama, chat_templates_dir: Path) -> ChatTemplates:
    """A thinking model's template (Qwen 3) over the default model's vocabulary."""
    return ChatTemplates(llama.model, (chat_templates_dir / "Qwen-Qwen3-0.6B.jinja").read_text())


def parsed(
    templates: ChatTemplates, assistant: dict[str, Any], continuation: bool | str, reply: str
) -> list[Event]:
    """The events of ``reply`` continuing ``assistant``'s turn, rendered with ``templates``."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", **assistant}]
    rendered = templates.render(messages, add_generation_prompt=False, continue_final_message=continuation)
    parser = ReplyParser(rendered.parser_params)
    in_reasoning = continuation == "reasoning_content"
    parser.skip_opening(Opening(assistant.get("reasoning_content", ""), assistant["content"], in_reasoning))
    events: list[Event] = []
    for piece in reply:
        parser.feed(piece, lib.LCPP_FEED_MORE, events)
    parser.feed("", lib.LCPP_FEED_END, events)
    return events


def joined(events: list[Event], kind: type[TextDelta] | type[ReasoningDelta]) -> str:
    return "".join(event.text for event in events if isinstance(event, kind))


def test_a_thinking_turn_can_go_on_thinking(thinking_templates: ChatTemplates) -> None:
    events = parsed(
        thinking_templates,
        {"reasoning_content": "Let me think", "content": ""},
        "reasoning_content",
        " about it.</think>\n\nHello!",
    )
    assert joined(events, ReasoningDelta).strip() == "about it."
    assert joined(events, TextDelta) == "Hello!"


def test_a_thinking_turn_with_its_answer_begun_goes_on_answering(thinking_templates: ChatTemplates) -> None:
    events = parsed(thinking_templates, {"reasoning_content": "Easy.", "content": "Hel"}, True, "lo there")
    assert joined(events, ReasoningDelta) == ""
    assert joined(events, TextDelta) == "lo there"
