"""Engine chunks -> OpenAI-shaped stream chunks, one shaper per response.

A shaper is fed the engine's ``Chunk``s in order and returns the OpenAI chunk
dicts to emit.  The same shaper serves a thread reading a stream and an event
loop awaiting one, so sync and async paths share every rule.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from llamacpp_native import responses
from llamacpp_native.engine import Chunk, TokenLogprob


class CompletionShaper:
    """``text_completion`` chunks: text, legacy logprobs with offsets, usage at the end."""

    def __init__(self, model: str, prefix: str = "", suffix: str = "") -> None:
        self.id = responses.new_id("cmpl")
        self.model = model
        self.prefix = prefix
        self.suffix = suffix
        self._offset = len(prefix)

    def start(self) -> list[dict[str, Any]]:
        """Chunks to send before any token (the echoed prompt)."""
        return (
            [responses.completion(self.id, self.model, self.prefix, None, None, None)] if self.prefix else []
        )

    def feed(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The chunk dicts for one engine chunk."""
        text = chunk.text + (self.suffix if chunk.finish_reason else "")
        logprobs = None
        if chunk.logprobs:
            logprobs = responses.completion_logprobs(chunk.logprobs, self._offset)
            self._offset += sum(len(item.text) for item in chunk.logprobs)
        token_usage = (
            responses.usage(chunk.prompt_tokens, chunk.completion_tokens, chunk.cached_tokens)
            if chunk.finish_reason
            else None
        )
        return [responses.completion(self.id, self.model, text, chunk.finish_reason, logprobs, token_usage)]


ChatParser = Callable[[str, bool], dict[str, Any]]
"""``parse(text, partial)`` -> an assistant message dict (content, tool_calls)."""


class ChatShaper:
    """``chat.completion.chunk``s: role first, content deltas, tool calls and usage at the end.

    With ``parse_output`` the reply goes through the template's parser: content
    is streamed once the parser sees it is not a tool call, and tool calls come
    whole in the last chunk.  Output cut off by ``max_tokens`` is parsed as
    partial, and a call cut off is not a call.
    """

    def __init__(self, model: str, parse: ChatParser, parse_output: bool) -> None:
        self.id = responses.new_id("chatcmpl")
        self.model = model
        self._parse = parse
        self._parse_output = parse_output
        self._text = ""
        self._sent = 0
        self._pending: list[TokenLogprob] = []  # logprobs not yet attached to a chunk

    def start(self) -> list[dict[str, Any]]:
        """The opening chunk with the assistant role."""
        return [responses.chat_chunk(self.id, self.model, {"role": "assistant", "content": ""})]

    def feed(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The chunk dicts for one engine chunk (often none while a tool call is forming)."""
        self._text += chunk.text
        self._pending.extend(chunk.logprobs or [])
        if chunk.finish_reason is not None:
            return [self._final(chunk)]
        if self._parse_output:
            partial = self._parse(self._text, True)
            content = partial.get("content") or ""
            if len(content) <= self._sent or partial.get("tool_calls"):
                return []
            delta_text, self._sent = content[self._sent :], len(content)
        elif chunk.text or self._pending:
            delta_text = chunk.text
        else:
            return []
        return [
            responses.chat_chunk(self.id, self.model, {"content": delta_text}, None, None, self._logprobs())
        ]

    def _final(self, chunk: Chunk) -> dict[str, Any]:
        truncated = chunk.finish_reason == "length"
        message = self._parse(self._text, truncated)
        content = message.get("content") or ""
        tool_calls = message.get("tool_calls") or []
        if truncated:  # a call cut off by max_tokens is not a call
            tool_calls = [c for c in tool_calls if _is_json_object(c["function"].get("arguments", ""))]
            if not tool_calls and not content:
                content = self._text  # keep what was generated rather than lose it
        delta: dict[str, Any] = {}
        if self._parse_output and len(content) > self._sent:
            delta["content"] = content[self._sent :]
        elif not self._parse_output and chunk.text:
            delta["content"] = chunk.text
        if tool_calls:
            delta["tool_calls"] = [
                {
                    "index": i,
                    "id": call.get("id") or responses.new_id("call"),
                    "type": "function",
                    "function": call["function"],
                }
                for i, call in enumerate(tool_calls)
            ]
        finish = "tool_calls" if tool_calls and not truncated else chunk.finish_reason
        return responses.chat_chunk(
            self.id,
            self.model,
            delta,
            finish,
            responses.usage(chunk.prompt_tokens, chunk.completion_tokens, chunk.cached_tokens),
            self._logprobs(),
        )

    def _logprobs(self) -> dict[str, Any] | None:
        if not self._pending:
            return None
        block = responses.chat_logprobs(self._pending)
        self._pending = []
        return block


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
