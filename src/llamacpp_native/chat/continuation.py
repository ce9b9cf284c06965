"""Continuing the last assistant turn (assistant prefill, ``continue_final_message``).

A chat whose last message is the assistant's is, by default, continued: the template
renders every message before it, then opens the assistant's turn with that message's
text, and the model goes on from there (llama-server's "assistant prefill", Anthropic's
prefill, vLLM's ``continue_final_message``).  The reply holds only what the model adds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONTINUATION_KINDS = ("content", "reasoning_content")
"""The parts of the last assistant turn that ``continue_final_message`` may name."""


def plan_continuation(
    messages: Sequence[Mapping[str, Any]],
    continue_final_message: bool | str | None,
    add_generation_prompt: bool | None,
) -> tuple[bool | str, bool]:
    """``(continuation, add_generation_prompt)`` for llama.cpp's template engine.

    ``continue_final_message``: ``None`` continues a last assistant turn and opens a new
    turn otherwise; ``True`` (or ``"content"``, ``"reasoning_content"``: which part goes
    on) continues it; ``False`` closes it and opens a new turn.  ``add_generation_prompt``
    ``None`` means "open a new turn unless continuing".  ``ValueError`` for what cannot be
    continued: both asked at once, two assistant turns at the end, a turn with tool calls,
    or no assistant turn to continue.
    """
    if isinstance(continue_final_message, str) and continue_final_message not in CONTINUATION_KINDS:
        raise ValueError(
            f"continue_final_message must be a boolean or one of {', '.join(CONTINUATION_KINDS)}, "
            f"got {continue_final_message!r}"
        )
    last = messages[-1] if messages else None
    ends_with_assistant = last is not None and last.get("role") == "assistant"
    if continue_final_message is None:
        continue_final_message = ends_with_assistant and add_generation_prompt is not True
    if not continue_final_message:
        return False, add_generation_prompt is not False
    if add_generation_prompt:
        raise ValueError("add_generation_prompt and continue_final_message cannot both be true")
    if not ends_with_assistant:
        raise ValueError("continue_final_message needs the last message to be the assistant's")
    if len(messages) >= 2 and messages[-2].get("role") == "assistant":
        raise ValueError("cannot continue a chat that ends with two assistant turns in a row")
    if last is not None and last.get("tool_calls"):
        raise ValueError("cannot continue an assistant turn that holds tool calls")
    return continue_final_message, False


@dataclass(frozen=True)
class Opening:
    """What a continued assistant turn already put in the prompt."""

    reasoning: str
    content: str
    in_reasoning: bool
    """Whether the reply goes on with the reasoning (``"reasoning_content"``), else with the content."""


def opening_of(message: Mapping[str, Any], continuation: bool | str) -> Opening:
    """The opening a continued assistant ``message`` puts in the prompt.

    Text parts are joined by a blank line, as llama.cpp's template engine joins them.
    """
    content = message.get("content") or ""
    if not isinstance(content, str):
        content = "\n\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return Opening(str(message.get("reasoning_content") or ""), content, continuation == "reasoning_content")
