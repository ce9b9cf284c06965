"""Streamed chunks -> one response, for requests with ``stream: false``.

The server always generates as a stream (so a client that goes away can be
noticed between tokens); a non-streaming answer is its chunks put together,
in the shapes of ``llamacpp_native.responses``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llamacpp_native import responses


def chat_completion(chunks: Sequence[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` from its ``chat.completion.chunk``s."""
    content, finish = "", "stop"
    tool_calls: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []
    for chunk in chunks:
        choice = chunk["choices"][0]
        delta = choice["delta"]
        content += delta.get("content") or ""
        tool_calls.extend(delta.get("tool_calls") or [])
        if choice.get("logprobs"):
            logprobs.extend(choice["logprobs"]["content"])
        finish = choice["finish_reason"] or finish
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in tool_calls]
    first = chunks[0]
    return responses.chat_completion(
        first["id"], first["model"], message, finish, {"content": logprobs} if logprobs else None, usage
    )


def completion(
    chunks: Sequence[dict[str, Any]], usage: dict[str, Any], with_logprobs: bool
) -> dict[str, Any]:
    """A ``text_completion`` from its chunks; ``with_logprobs`` merges their logprobs blocks."""
    text, finish = "", None
    logprobs: dict[str, list[Any]] = {
        "tokens": [],
        "text_offset": [],
        "token_logprobs": [],
        "top_logprobs": [],
    }
    for chunk in chunks:
        choice = chunk["choices"][0]
        text += choice["text"]
        for key, values in (choice["logprobs"] or {}).items():
            logprobs[key].extend(values)
        finish = choice["finish_reason"] or finish
    first = chunks[0]
    return responses.completion(
        first["id"], first["model"], text, finish, logprobs if with_logprobs else None, usage
    )
