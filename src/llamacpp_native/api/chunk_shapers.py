"""OpenAI-shaped stream chunks, one shaper per response.

A completion shaper is fed the engine's ``Chunk``s; a chat shaper is fed the
typed events of the reply (``llamacpp_native.engine.events``).  Each returns the
OpenAI chunk dicts to emit.  The same shaper serves a thread reading a stream
and an event loop awaiting one, so sync and async paths share every rule.
"""

from __future__ import annotations

from typing import Any

from llamacpp_native.api import openai_shapes
from llamacpp_native.engine.events import (
    Event,
    Finish,
    LogprobsDelta,
    PromptProgress,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from llamacpp_native.engine.types import Chunk, TokenLogprob


class CompletionShaper:
    """``text_completion`` chunks: text, legacy logprobs with offsets, usage at the end."""

    def __init__(self, model: str, prefix: str = "", suffix: str = "", index: int = 0) -> None:
        self.id = openai_shapes.new_id("cmpl")
        self.model = model
        self.prefix = prefix
        self.suffix = suffix
        self.index = index
        """The choice this shaper's chunks belong to (``n`` choices, or a batch of prompts)."""
        self._offset = len(prefix)

    def start(self) -> list[dict[str, Any]]:
        """Chunks to send before any token (the echoed prompt)."""
        return (
            [openai_shapes.completion(self.id, self.model, self.prefix, None, None, None, index=self.index)]
            if self.prefix
            else []
        )

    def feed(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The chunk dicts for one engine chunk (a progress chunk: no text, ``prompt_progress``)."""
        if chunk.prompt_processed is not None:
            item = openai_shapes.completion(self.id, self.model, "", None, None, None, index=self.index)
            item["prompt_progress"] = openai_shapes.prompt_progress(
                chunk.prompt_tokens, chunk.cached_tokens, chunk.prompt_processed
            )
            return [item]
        text = chunk.text + (self.suffix if chunk.finish_reason else "")
        logprobs = None
        if chunk.logprobs:
            logprobs = openai_shapes.completion_logprobs(chunk.logprobs, self._offset)
            self._offset += sum(len(item.text) for item in chunk.logprobs)
        token_usage = (
            openai_shapes.usage(
                chunk.prompt_tokens,
                chunk.completion_tokens,
                chunk.cached_tokens,
                chunk.draft_tokens,
                chunk.draft_accepted,
            )
            if chunk.finish_reason
            else None
        )
        return [
            openai_shapes.completion(
                self.id, self.model, text, chunk.finish_reason, logprobs, token_usage, index=self.index
            )
        ]


class ChatShaper:
    """``chat.completion.chunk``s from a chat reply's events: role first, then one chunk per batch.

    Content, ``reasoning_content`` and tool-call fragments go out as they are
    parsed, the way llama-server streams them: a call's ``id``, ``type`` and
    ``name`` on its first fragment, then ``arguments`` pieces under the same
    ``index``.  The last chunk carries ``finish_reason`` and ``usage``.
    """

    __slots__ = ("id", "index", "model")

    def __init__(self, model: str, index: int = 0) -> None:
        self.id = openai_shapes.new_id("chatcmpl")
        self.model = model
        self.index = index

    def start(self) -> list[dict[str, Any]]:
        """The opening chunk with the assistant role."""
        role = {"role": "assistant", "content": ""}
        return [openai_shapes.chat_chunk(self.id, self.model, role, index=self.index)]

    def feed(self, events: list[Event]) -> list[dict[str, Any]]:
        """The chunk for one batch of events (none for an empty batch)."""
        delta: dict[str, Any] = {}
        logprobs: list[TokenLogprob] = []
        finish: str | None = None
        usage: dict[str, Any] | None = None
        for event in events:
            if isinstance(event, TextDelta):
                delta["content"] = delta.get("content", "") + event.text
            elif isinstance(event, ReasoningDelta):
                delta["reasoning_content"] = delta.get("reasoning_content", "") + event.text
            elif isinstance(event, ToolCallDelta):
                delta.setdefault("tool_calls", []).append(_tool_call_fragment(event))
            elif isinstance(event, LogprobsDelta):
                logprobs.extend(event.items)
            elif isinstance(event, Finish):
                finish = event.reason
            elif isinstance(event, Usage):
                usage = openai_shapes.usage(
                    event.prompt_tokens,
                    event.completion_tokens,
                    event.cached_tokens,
                    event.draft_tokens,
                    event.draft_accepted,
                )
            elif isinstance(event, PromptProgress):  # alone in its batch
                return [self._progress(event)]
        if not delta and not logprobs and finish is None:
            return []
        block = openai_shapes.chat_logprobs(logprobs) if logprobs else None
        return [openai_shapes.chat_chunk(self.id, self.model, delta, finish, usage, block, self.index)]

    def _progress(self, event: PromptProgress) -> dict[str, Any]:
        """llama-server's progress chunk: the role, no content, and ``prompt_progress``."""
        role = {"role": "assistant", "content": None}
        chunk = openai_shapes.chat_chunk(self.id, self.model, role, index=self.index)
        chunk["prompt_progress"] = openai_shapes.prompt_progress(event.total, event.cached, event.processed)
        return chunk


def _tool_call_fragment(event: ToolCallDelta) -> dict[str, Any]:
    if event.name is None:
        return {"index": event.index, "function": {"arguments": event.arguments}}
    return {
        "index": event.index,
        "id": event.id or openai_shapes.new_id("call"),
        "type": "function",
        "function": {"name": event.name, "arguments": event.arguments},
    }
