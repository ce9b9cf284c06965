"""llama.cpp's built-in chat templates, named instead of given as Jinja text."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamacpp_native import ChatTemplateError, Llama
from llamacpp_native.chat.templates import ChatTemplates, builtin_template_names

CHAT = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "Hi there"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_the_names_are_llama_cpps_own(llama: Llama) -> None:
    assert {"llama3", "command-r", "chatml", "mistral-v7", "phi4"} <= set(builtin_template_names())


def test_a_named_template_renders_that_family_s_turns(llama: Llama) -> None:
    prompt = ChatTemplates(llama.model, "command-r").render(CHAT).prompt
    assert prompt == (
        "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a test.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    )


def test_a_llama_with_a_named_template_chats_and_follows_schemas(model_path: Path) -> None:
    with Llama(model_path, n_ctx=256, chat_template="llama3") as named:
        assert named.render_chat(CHAT).prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        reply = named.create_chat_completion(CHAT, max_tokens=8, response_format={"type": "json_object"})
        assert isinstance(reply, dict)
        assert reply["choices"][0]["message"]["content"].lstrip().startswith(("{", "["))


@pytest.mark.parametrize("name", ["llama-3", "nonsense"])
def test_a_name_that_is_no_template_is_refused_with_the_names(llama: Llama, name: str) -> None:
    with pytest.raises(ChatTemplateError, match="built-in template name.*command-r"):
        ChatTemplates(llama.model, name)


def test_what_a_named_template_cannot_show_is_refused(llama: Llama) -> None:
    named = ChatTemplates(llama.model, "llama3")
    with pytest.raises(ChatTemplateError, match="use a Jinja template"):
        named.render(CHAT, tools=[TOOL])
    with pytest.raises(ChatTemplateError, match="use a Jinja template"):
        named.render(
            [*CHAT, {"role": "assistant", "content": "Hel"}],
            add_generation_prompt=False,
            continue_final_message=True,
        )
    assert named.render(CHAT).prompt  # still usable
