"""What LlamaIndex's streams yield: engine output (chunk dicts, typed events) as cumulative responses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
)
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.program.utils import process_streaming_objects

from llamacpp_integrations.llama_index._messages import assistant_message
from llamacpp_native.api import openai_shapes
from llamacpp_native.events import Event, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage

R = TypeVar("R", ChatResponse, CompletionResponse)


class PartialObjects:
    """Turns a growing JSON reply into partial output objects (LlamaIndex's own parser)."""

    def __init__(self, output_cls: type[BaseModel]) -> None:
        self._output_cls = output_cls
        self._current: list[Any] | None = None

    def feed(self, response: ChatResponse) -> Any:
        objects = process_streaming_objects(response, self._output_cls, cur_objects=self._current)
        self._current = objects if isinstance(objects, list) else [objects]
        return objects


class CompletionResponses:
    """``text_completion`` chunks -> cumulative ``CompletionResponse``s."""

    def __init__(self) -> None:
        self.text = ""

    def feed(self, chunk: dict[str, Any]) -> CompletionResponse:
        delta = chunk["choices"][0]["text"]
        self.text += delta
        return CompletionResponse(
            text=self.text, delta=delta, raw=chunk, additional_kwargs=chunk.get("usage") or {}
        )


class PromptChatResponses(CompletionResponses):
    """Completion chunks of a ``messages_to_prompt`` prompt -> cumulative ``ChatResponse``s."""

    def feed(self, chunk: dict[str, Any]) -> ChatResponse:  # type: ignore[override]
        response = super().feed(chunk)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text),
            delta=response.delta,
            raw=chunk,
            additional_kwargs=response.additional_kwargs,
        )


class ChatResponses:
    """A chat's event batches -> cumulative ``ChatResponse``s (None for an empty batch).

    Thinking is kept as a ``ThinkingBlock``; tool-call fragments are joined by index
    into ``ToolCallBlock``s as they stream.  ``raw`` holds the batch's events, and on
    the last response its ``finish_reason`` and ``usage``.
    """

    def __init__(self) -> None:
        self.text = ""
        self.thinking = ""
        self.calls: dict[int, dict[str, Any]] = {}

    def feed(self, events: list[Event]) -> ChatResponse | None:
        delta = ""
        usage: dict[str, Any] = {}
        finish: str | None = None
        for event in events:
            if isinstance(event, TextDelta):
                delta += event.text
            elif isinstance(event, ReasoningDelta):
                self.thinking += event.text
            elif isinstance(event, ToolCallDelta):
                call = self.calls.setdefault(
                    event.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if event.name is not None:
                    call["id"], call["function"]["name"] = event.id or event.name, event.name
                call["function"]["arguments"] += event.arguments
            elif isinstance(event, Finish):
                finish = event.reason
                if finish == "stop":
                    self.calls.clear()  # the call's text was malformed: it came back as content
            elif isinstance(event, Usage):
                usage = openai_shapes.usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
        if not delta and not events:
            return None
        self.text += delta
        calls = [self.calls[i] for i in sorted(self.calls)]
        return ChatResponse(
            message=assistant_message(self.text, calls, self.thinking),
            delta=delta,
            raw={"events": events, "finish_reason": finish, "usage": usage or None},
            additional_kwargs=usage,
        )


async def afinal(responses: AsyncIterator[R]) -> R:
    """``final`` for an async stream."""
    last: R | None = None
    async for last in responses:  # noqa: B007 - the last one is the aggregate
        pass
    assert last is not None, "a generation always ends with a final chunk"
    last.delta = None
    return last


def final(responses: Iterator[R]) -> R:
    """Run a stream to its end and return the whole response."""
    last: R | None = None
    for last in responses:  # noqa: B007 - the last one is the aggregate
        pass
    assert last is not None, "a generation always ends with a final chunk"
    last.delta = None
    return last
