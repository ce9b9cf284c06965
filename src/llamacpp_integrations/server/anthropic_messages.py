"""Anthropic's Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``), rendered from the
typed chat events.

A request becomes a chat request (``system`` -> a system message, ``tool_use`` blocks ->
tool calls, ``tool_result`` blocks -> tool turns, base64 images -> ``data:`` URLs,
``thinking`` -> the reasoning budget or ``enable_thinking``); ``MessageRenderer`` turns
the reply's events into Anthropic's stream (``message_start``, content blocks,
``message_delta``, ``message_stop``) and into the message a request without ``stream``
gets.  Errors have Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sse_starlette import ServerSentEvent

from llamacpp_integrations.server.chat_events import ChatEvents, named_event
from llamacpp_integrations.server.errors import APIError, api_error
from llamacpp_integrations.server.openai_responses import new_id
from llamacpp_integrations.server.schemas import ChatCompletionRequest, SamplingBody
from llamacpp_native.engine.text_stream import StopMatcher
from llamacpp_native.events import Event, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def error_body(error: APIError) -> dict[str, Any]:
    """``error`` in Anthropic's shape (``overloaded_error`` for a full queue, ``api_error`` for 5xx)."""
    if error.code == "server_overloaded":
        kind = "overloaded_error"
    else:
        kind = _ERROR_TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


class ErrorDetail(BaseModel):
    """The fields of an Anthropic error."""

    type: str
    message: str


class ErrorBody(BaseModel):
    """``{"type": "error", "error": {...}}``: the body of every error of these routes."""

    type: Literal["error"] = "error"
    error: ErrorDetail


class _Block(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextBlock(_Block):
    """``{"type": "text", "text": ...}``."""

    type: Literal["text"]
    text: str


class Base64Source(_Block):
    """An image's bytes, base64-encoded."""

    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_Block):
    """An image by URL (fetched only with --allow_remote_media)."""

    type: Literal["url"]
    url: str


class ImageBlock(_Block):
    """An image (the model needs --mmproj)."""

    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]

    def url(self) -> str:
        """The image as the chat's ``image_url`` takes it."""
        source = self.source
        if isinstance(source, UrlSource):
            return source.url
        return f"data:{source.media_type};base64,{source.data}"


class ToolUseBlock(_Block):
    """A tool call in an earlier assistant turn."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_Block):
    """The result of the call ``tool_use_id``."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool = False


class ThinkingBlock(_Block):
    """Earlier thinking: the turn's ``reasoning_content``, for templates that show it (most drop it);
    redacted thinking is left out."""

    type: Literal["thinking", "redacted_thinking"]
    thinking: str = ""


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock, Field(discriminator="type")
]


class Message(_Block):
    """A turn of the conversation."""

    role: Literal["user", "assistant"]
    content: list[ContentBlock] | str  # the list first: its errors say more


class Tool(_Block):
    """A client tool: ``name``, ``description`` and the JSON schema of its ``input``."""

    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(_Block):
    """``auto``, ``any`` (some tool), ``tool`` (the one named) or ``none``."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("a tool_choice of type 'tool' needs the tool's name")
        return self

    def as_chat(self) -> str | dict[str, Any]:
        """The chat's ``tool_choice``."""
        if self.type == "tool":
            return {"type": "function", "function": {"name": self.name}}
        return {"auto": "auto", "any": "required", "none": "none"}[self.type]


class ThinkingEnabled(_Block):
    """Think, at most ``budget_tokens`` tokens."""

    type: Literal["enabled"]
    budget_tokens: int = Field(ge=0)


class ThinkingOther(_Block):
    """``disabled``: the template is told not to think; ``adaptive``: the model's default."""

    type: Literal["disabled", "adaptive"]


class CountTokensRequest(SamplingBody):
    """``POST /v1/messages/count_tokens``; the fields of a message request that shape its prompt."""

    model: str | None = Field(default=None, description="A served model's name; omitted = the default.")
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Annotated[ThinkingEnabled | ThinkingOther, Field(discriminator="type")] | None = None

    def chat_request(self, **extra: Any) -> ChatCompletionRequest:
        """The chat request (``extra``: more of its fields)."""
        fields: dict[str, Any] = {
            **self.model_dump(include=set(SamplingBody.model_fields), exclude_none=True),
            "model": self.model,
            "messages": self.chat_messages(),
            **extra,
        }
        if self.tools:
            fields["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.input_schema},
                }
                for t in self.tools
            ]
        choice = self.tool_choice
        if choice is not None:
            fields["tool_choice"] = choice.as_chat()
            fields["parallel_tool_calls"] = choice.disable_parallel_tool_use is False
        if isinstance(self.thinking, ThinkingEnabled):
            fields["reasoning_budget"] = self.thinking.budget_tokens
        elif self.thinking is not None and self.thinking.type == "disabled":
            fields["chat_template_kwargs"] = {"enable_thinking": False}
        return ChatCompletionRequest.model_validate(fields)

    def chat_messages(self) -> list[dict[str, Any]]:
        """``system`` and ``messages`` as chat messages; a turn's tool results come first, as tool turns."""
        messages: list[dict[str, Any]] = []
        if self.system:
            system = self.system if isinstance(self.system, str) else "\n".join(b.text for b in self.system)
            messages.append({"role": "system", "content": system})
        for message in self.messages:
            if isinstance(message.content, str):
                messages.append({"role": message.role, "content": message.content})
                continue
            parts: list[dict[str, Any]] = []
            calls: list[dict[str, Any]] = []
            thinking: list[str] = []
            for block in message.content:
                if isinstance(block, ToolResultBlock):
                    content = block.content if isinstance(block.content, str) else _parts(block.content)
                    messages.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": content})
                elif isinstance(block, ToolUseBlock):
                    arguments = json.dumps(block.input, ensure_ascii=False)
                    calls.append(
                        {
                            "id": block.id,
                            "type": "function",
                            "function": {"name": block.name, "arguments": arguments},
                        }
                    )
                elif isinstance(block, (TextBlock, ImageBlock)):
                    parts += _parts([block])
                elif isinstance(block, ThinkingBlock) and block.thinking and message.role == "assistant":
                    thinking.append(block.thinking)
            if parts or calls or thinking:
                turn: dict[str, Any] = {"role": message.role, "content": parts or None}
                if calls:
                    turn["tool_calls"] = calls
                if thinking:
                    turn["reasoning_content"] = "\n\n".join(thinking)
                messages.append(turn)
        return messages


def _parts(blocks: list[TextBlock | ImageBlock]) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": b.text}
        if isinstance(b, TextBlock)
        else {"type": "image_url", "image_url": {"url": b.url()}}
        for b in blocks
    ]


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages`` (llama-server's sampling fields and ``grammar`` too)."""

    max_tokens: int = Field(ge=1, description="Most tokens to generate (required).")
    stop_sequences: list[str] | None = None
    stream: bool = False


@dataclass
class _Open:
    """A content block being generated: its text (or input JSON) so far."""

    kind: Literal["text", "thinking", "tool_use"]
    index: int
    parts: list[str] = field(default_factory=list)
    id: str = ""
    name: str = ""


class MessageRenderer:
    """Typed chat events -> Anthropic's stream events and message.

    A block opens with its first delta (thinking, text or a tool call) and stops when another
    begins or the reply ends.  Stop sequences are matched here, in the text: when one is
    found, ``stopped`` is set and the caller ends the generation.
    """

    def __init__(self, message: dict[str, Any], stop_sequences: list[str]) -> None:
        self.message = message
        self.content: list[dict[str, Any]] = []
        self.stopped = False
        self.batches = 0
        self._block: _Open | None = None
        self._calls: dict[int, _Open] = {}
        self._stops = StopMatcher(stop_sequences)
        self._reason = "stop"
        self._usage: Usage | None = None

    @classmethod
    def for_request(cls, body: MessagesRequest, model: str) -> MessageRenderer:
        """A renderer of a new message (``msg_...``) answering ``body`` from ``model``."""
        message: dict[str, Any] = {
            "id": new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        return cls(message, body.stop_sequences or [])

    def start(self, prompt_tokens: int = 0) -> list[dict[str, Any]]:
        """``message_start`` with the prompt's tokens (how many come from the prefix cache is known only
        at the end: ``message_delta`` has the final counts)."""
        usage = {"input_tokens": prompt_tokens, "cache_read_input_tokens": 0, "output_tokens": 0}
        return [{"type": "message_start", "message": {**self.message, "content": [], "usage": usage}}]

    def feed(self, batch: list[Event]) -> list[dict[str, Any]]:
        """The events of one batch (none after a stop sequence)."""
        self.batches += 1
        events: list[dict[str, Any]] = []
        for event in batch:
            if isinstance(event, TextDelta):
                text = self._stops.push(event.text)
                if text:
                    block = self._current("text", events)
                    block.parts.append(text)
                    events.append(self._delta(block, {"type": "text_delta", "text": text}))
                if self._stops.stopped:
                    self.stopped = True
                    return events
            elif isinstance(event, ReasoningDelta) and event.text:
                block = self._current("thinking", events)
                block.parts.append(event.text)
                events.append(self._delta(block, {"type": "thinking_delta", "thinking": event.text}))
            elif isinstance(event, ToolCallDelta):
                block = self._call(event, events)
                if event.arguments:
                    block.parts.append(event.arguments)
                    events.append(
                        self._delta(block, {"type": "input_json_delta", "partial_json": event.arguments})
                    )
            elif isinstance(event, Finish):
                self._reason = event.reason
            elif isinstance(event, Usage):
                self._usage = event
        return events

    def finish(self, usage: Usage | None = None) -> list[dict[str, Any]]:
        """Stop the open block; ``message_delta`` (stop reason, usage) and ``message_stop``.

        ``usage``: the counts of a reply ended at a stop sequence, which gets no ``Usage`` event.
        """
        events = self._close()
        usage = usage or self._usage or Usage(0, 0)
        stop_sequence = self._stops.matched if self.stopped else None
        if stop_sequence is not None:
            reason = "stop_sequence"
        else:
            reason = {"length": "max_tokens", "tool_calls": "tool_use"}.get(self._reason, "end_turn")
        counts = {  # Anthropic's split: input_tokens are those not read from the (prefix) cache
            "input_tokens": usage.prompt_tokens - usage.cached_tokens,
            "cache_read_input_tokens": usage.cached_tokens,
            "output_tokens": usage.completion_tokens,
        }
        self.message.update(
            content=self.content, stop_reason=reason, stop_sequence=stop_sequence, usage=counts
        )
        delta = {"stop_reason": reason, "stop_sequence": stop_sequence}
        events.append({"type": "message_delta", "delta": delta, "usage": counts})
        events.append({"type": "message_stop"})
        return events

    def _delta(self, block: _Open, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": block.index, "delta": delta}

    def _current(self, kind: Literal["text", "thinking"], events: list[dict[str, Any]]) -> _Open:
        if self._block is not None and self._block.kind == kind:
            return self._block
        events += self._close()
        block = self._block = _Open(kind, len(self.content))
        self.content.append({})  # the slot of the finished block
        start = (
            {"type": "text", "text": ""}
            if kind == "text"
            else {"type": "thinking", "thinking": "", "signature": ""}
        )
        events.append({"type": "content_block_start", "index": block.index, "content_block": start})
        return block

    def _call(self, delta: ToolCallDelta, events: list[dict[str, Any]]) -> _Open:
        known = self._calls.get(delta.index)
        if known is not None:
            return known
        events += self._close()
        block = _Open("tool_use", len(self.content), id=delta.id or new_id("toolu"), name=delta.name or "")
        self._block = self._calls[delta.index] = block
        self.content.append({})
        start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        events.append({"type": "content_block_start", "index": block.index, "content_block": start})
        return block

    def _close(self) -> list[dict[str, Any]]:
        block, self._block = self._block, None
        if block is None:
            return []
        events: list[dict[str, Any]] = []
        if block.kind == "text":
            held = self._stops.flush()  # text kept back as the possible start of a stop sequence
            if held:
                block.parts.append(held)
                events.append(self._delta(block, {"type": "text_delta", "text": held}))
            self.content[block.index] = {"type": "text", "text": "".join(block.parts)}
        elif block.kind == "thinking":
            self.content[block.index] = {
                "type": "thinking",
                "thinking": "".join(block.parts),
                "signature": "",
            }
        else:
            self.content[block.index] = {
                "type": "tool_use",
                "id": block.id,
                "name": block.name,
                "input": _arguments("".join(block.parts)),
            }
        events.append({"type": "content_block_stop", "index": block.index})
        return events


def _arguments(text: str) -> dict[str, Any]:
    """A call's input: its JSON object, or ``{}`` for arguments cut off by ``max_tokens``."""
    with contextlib.suppress(ValueError):
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    return {}


class MessageRun:
    """One ``/v1/messages`` request: its events (SSE) or its message."""

    def __init__(self, chat: ChatEvents, body: MessagesRequest) -> None:
        self.chat = chat
        self.renderer = MessageRenderer.for_request(body, chat.lease.alias)

    async def _events(self, count_first: bool = False) -> AsyncIterator[dict[str, Any]]:
        renderer = self.renderer
        prompt_tokens = await self.chat.prompt_tokens() if count_first else 0
        for event in renderer.start(prompt_tokens):
            yield event
        async with contextlib.aclosing(self.chat.batches()) as batches:
            async for batch in batches:
                for event in renderer.feed(batch):
                    yield event
                if renderer.stopped:
                    break
        usage = None
        if renderer.stopped:
            await self.chat.stop()
            # One batch per engine chunk, and one chunk per token but where a character spans tokens.
            usage = Usage(await self.chat.prompt_tokens(), renderer.batches)
            self.chat.record.prompt_tokens, self.chat.record.completion_tokens = (
                usage.prompt_tokens,
                renderer.batches,
            )
        for event in renderer.finish(usage):
            yield event

    async def response(self) -> dict[str, Any]:
        """The finished message."""
        try:
            async for _ in self._events():
                pass
        finally:
            await self.close()
        return self.renderer.message

    async def events(self) -> AsyncIterator[ServerSentEvent]:
        """Anthropic's stream; an error after it began is its last event, ``error``."""
        try:
            async for event in self._events(count_first=True):
                yield named_event(event)
        except Exception as error:
            yield named_event(error_body(api_error(error)))
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop generating if still running and release the model (safe to call again)."""
        await self.chat.close()
