"""OpenAI's Responses API (``POST /v1/responses``), rendered from the typed chat events.

A request becomes a chat request (input items -> messages, flat function tools -> chat
tools, ``text.format`` -> ``response_format``); ``ResponseRenderer`` turns the reply's
events into the Responses stream, each event with its ``sequence_number``, and into the
final response object that a request without ``stream`` gets.  Responses are kept in
memory for ``previous_response_id``: the last ``RESPONSE_STORE_SIZE`` of them.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from llamacpp_integrations.server.errors import APIError
from llamacpp_integrations.server.schemas import ChatCompletionRequest, SamplingBody
from llamacpp_native.events import Event, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage

RESPONSE_STORE_SIZE = 256
"""Responses kept for ``previous_response_id`` (and ``GET /v1/responses/{id}``); the least
recently used is forgotten first.  They live in the server's memory only."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextPart(_Part):
    """Text of a message: ``input_text`` (user), ``output_text`` (an earlier reply)."""

    type: Literal["input_text", "output_text", "text"]
    text: str


class ImagePart(_Part):
    """``input_image``: a ``data:`` URL (the model needs --mmproj)."""

    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class RefusalPart(_Part):
    """A refusal in an earlier reply, read as its text."""

    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[TextPart | ImagePart | RefusalPart, Field(discriminator="type")]


class MessageItem(_Part):
    """A message; ``content`` as text or parts.  ``developer`` is read as ``system``."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: list[ContentPart] | str  # the list first: its errors say more


class FunctionCallItem(_Part):
    """A call the model made earlier."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = "{}"


class FunctionCallOutputItem(_Part):
    """The result of the call ``call_id``."""

    type: Literal["function_call_output"]
    call_id: str
    output: list[ContentPart] | str


class ReasoningItem(_Part):
    """Earlier thinking: accepted and left out (chat templates drop the thinking of earlier turns)."""

    type: Literal["reasoning"]


def _item_type(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type", "message")  # a bare {"role", "content"} is a message
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_type),
]


class FunctionTool(_Part):
    """``{"type": "function", "name", "description", "parameters", "strict"}`` (the Responses' flat shape)."""

    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(_Part):
    """``{"type": "function", "name": ...}``: call this function."""

    type: Literal["function"]
    name: str


class TextFormat(_Part):
    """``text.format``: plain ``text``, any ``json_object``, or ``json_schema`` (grammar-constrained)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextOptions(_Part):
    """``text``: the reply's format."""

    format: TextFormat | None = None


class ResponsesRequest(SamplingBody):
    """``POST /v1/responses`` (llama-server's sampling fields and ``grammar`` too)."""

    model: str | None = Field(default=None, description="A served model's name; omitted = the default.")
    input: list[InputItem] | str = Field(description="A user message, or a list of input items.")
    instructions: str | None = Field(default=None, description="A system message (not carried over).")
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool = Field(default=False, description="Several calls per reply (off by default).")
    text: TextOptions | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    store: bool = Field(default=True, description="Keep the response for previous_response_id.")
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    timings_per_token: bool = Field(
        default=False, description="llama-server's extension: 'timings' on each streamed batch's last event."
    )
    return_progress: bool = Field(
        default=False,
        description="llama-server's extension: a streamed response.in_progress with 'prompt_progress' "
        "once the prompt is read.",
    )

    def chat_request(self, conversation: list[dict[str, Any]]) -> ChatCompletionRequest:
        """The chat request: ``instructions``, then ``conversation`` (an earlier one's and ``input``)."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        messages += conversation
        if not messages:
            raise APIError(400, "input must hold at least one item", param="input")
        fields: dict[str, Any] = {
            **self.model_dump(include=set(SamplingBody.model_fields), exclude_none=True),
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_output_tokens,
            "parallel_tool_calls": self.parallel_tool_calls,
        }
        if self.tools:
            fields["tools"] = [
                {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
                for tool in self.tools
            ]
            choice = self.tool_choice
            fields["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}}
                if isinstance(choice, FunctionChoice)
                else choice
            )
        text_format = self.text.format if self.text else None
        if text_format is not None and text_format.type == "json_object":
            fields["response_format"] = {"type": "json_object"}
        elif text_format is not None and text_format.type == "json_schema":
            schema = {"name": text_format.name or "response", "schema": text_format.schema_}
            fields["response_format"] = {
                "type": "json_schema",
                "json_schema": {**schema, "strict": text_format.strict},
            }
        return ChatCompletionRequest.model_validate(fields)

    def input_messages(self) -> list[dict[str, Any]]:
        """``input`` as chat messages: consecutive calls join the assistant turn before them."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        messages: list[dict[str, Any]] = []
        for item in self.input:
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": _content(item.content)})
            elif isinstance(item, FunctionCallItem):
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                _add_call(messages, call)
            elif isinstance(item, FunctionCallOutputItem):
                messages.append(
                    {"role": "tool", "tool_call_id": item.call_id, "content": _content(item.output)}
                )
        return messages

    def echo(self) -> dict[str, Any]:
        """The request's settings, as the response object repeats them."""
        text_format = self.text.format if self.text and self.text.format else TextFormat(type="text")
        choice = self.tool_choice
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {},
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "store": self.store,
            "temperature": self.temperature,
            "text": {"format": text_format.model_dump(by_alias=True, exclude_none=True)},
            "tool_choice": choice.model_dump() if isinstance(choice, FunctionChoice) else (choice or "auto"),
            "tools": [tool.model_dump() for tool in self.tools or []],
            "top_p": self.top_p,
        }


def _content(content: str | list[TextPart | ImagePart | RefusalPart]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, ImagePart):
            if not part.image_url:
                raise APIError(400, "an input_image needs image_url (a data: URL); file_id is not supported")
            parts.append({"type": "image_url", "image_url": {"url": part.image_url}})
        else:
            text = part.text if isinstance(part, TextPart) else part.refusal
            parts.append({"type": "text", "text": text})
    return parts


def _add_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last["tool_calls"] = [*(last.get("tool_calls") or []), call]
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def new_id(prefix: str) -> str:
    """A fresh id such as ``resp_5f0c...``."""
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class StoredResponse:
    """A finished response, and its conversation as chat messages (instructions left out)."""

    response: dict[str, Any]
    messages: list[dict[str, Any]]


class ResponseStore:
    """The last ``size`` responses in memory (least recently used forgotten first)."""

    def __init__(self, size: int = RESPONSE_STORE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def get(self, response_id: str) -> StoredResponse | None:
        """The response, or None if unknown or forgotten."""
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def put(self, response_id: str, stored: StoredResponse) -> None:
        """Keep ``stored``, forgetting the least recently used beyond ``size``."""
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def history(self, previous_id: str | None) -> list[dict[str, Any]]:
        """The conversation that ``previous_response_id`` continues (400 if it is not kept)."""
        if previous_id is None:
            return []
        stored = self.get(previous_id)
        if stored is None:
            raise APIError(
                400,
                f"Previous response with id {previous_id!r} not found (this server keeps the last "
                f"{self.size} responses, in memory)",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return stored.messages


@dataclass
class _Item:
    """An output item being generated: its text (or arguments) so far."""

    kind: Literal["message", "reasoning", "function_call"]
    index: int
    id: str
    parts: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""


class ResponseRenderer:
    """Typed chat events -> the Responses events and the response object.

    An item opens with its first delta (reasoning, message text or a function call) and
    closes when another begins or the reply ends.  Work per delta is constant: text is
    joined once, when its item closes.
    """

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.output: list[dict[str, Any]] = []
        self._sequence = 0
        self._item: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._reason = "stop"
        self._usage: Usage | None = None

    @classmethod
    def for_request(cls, body: ResponsesRequest, model: str) -> ResponseRenderer:
        """A renderer of a new response (``resp_...``) to ``body`` from ``model``."""
        response = {
            "id": new_id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "model": model,
            "output": [],
            "error": None,
            "incomplete_details": None,
            "usage": None,
            **body.echo(),
        }
        return cls(response)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress``."""
        snapshot = {**self.response, "status": "in_progress", "output": []}
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def progress(self, prompt_progress: dict[str, Any]) -> dict[str, Any]:
        """Another ``response.in_progress``, carrying llama-server's ``prompt_progress``."""
        snapshot = {**self.response, "status": "in_progress", "output": []}
        return self._event("response.in_progress", response=snapshot, prompt_progress=prompt_progress)

    def feed(self, batch: list[Event]) -> list[dict[str, Any]]:
        """The events of one batch."""
        events: list[dict[str, Any]] = []
        for event in batch:
            if isinstance(event, TextDelta) and event.text:
                item = self._current("message", events)
                item.parts.append(event.text)
                events.append(
                    self._delta(
                        "response.output_text.delta", item, content_index=0, logprobs=[], delta=event.text
                    )
                )
            elif isinstance(event, ReasoningDelta) and event.text:
                item = self._current("reasoning", events)
                item.parts.append(event.text)
                events.append(
                    self._delta("response.reasoning_text.delta", item, content_index=0, delta=event.text)
                )
            elif isinstance(event, ToolCallDelta):
                item = self._call(event, events)
                if event.arguments:
                    item.parts.append(event.arguments)
                    events.append(
                        self._delta("response.function_call_arguments.delta", item, delta=event.arguments)
                    )
            elif isinstance(event, Finish):
                self._reason = event.reason
            elif isinstance(event, Usage):
                self._usage = event
        return events

    def finish(self) -> list[dict[str, Any]]:
        """Close the open item; ``response.completed`` (``response.incomplete`` when cut at the limit)."""
        events = self._close()
        incomplete = self._reason == "length"
        usage = self._usage or Usage(0, 0)
        self.response.update(
            status="incomplete" if incomplete else "completed",
            completed_at=int(time.time()),
            incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
            output=self.output,
            usage={
                "input_tokens": usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
        )
        kind = "response.incomplete" if incomplete else "response.completed"
        events.append(self._event(kind, response=self.response))
        return events

    def fail(self, error: APIError) -> list[dict[str, Any]]:
        """``response.failed``: the error after the stream began (its items stay unfinished)."""
        code = "server_error" if error.status >= 500 else "invalid_prompt"
        finished = [item for item in self.output if item]  # an open item's slot is still empty
        self.response.update(status="failed", error={"code": code, "message": error.message}, output=finished)
        return [self._event("response.failed", response=self.response)]

    def messages(self) -> list[dict[str, Any]]:
        """The reply as a chat message, for a later ``previous_response_id``."""
        text = "".join(
            part["text"] for item in self.output if item["type"] == "message" for part in item["content"]
        )
        calls = [
            {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            for item in self.output
            if item["type"] == "function_call"
        ]
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = calls
        return [message]

    def _delta(self, kind: str, item: _Item, **fields: Any) -> dict[str, Any]:
        return self._event(kind, item_id=item.id, output_index=item.index, **fields)

    def _current(self, kind: Literal["message", "reasoning"], events: list[dict[str, Any]]) -> _Item:
        if self._item is not None and self._item.kind == kind:
            return self._item
        events += self._close()
        item = self._item = _Item(kind, len(self.output), new_id("msg" if kind == "message" else "rs"))
        self.output.append({})  # the slot of the finished item
        if kind == "message":
            added = {
                "id": item.id,
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            added = {
                "id": item.id,
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
            part = {"type": "reasoning_text", "text": ""}
        events.append(self._event("response.output_item.added", output_index=item.index, item=added))
        events.append(self._delta("response.content_part.added", item, content_index=0, part=part))
        return item

    def _call(self, delta: ToolCallDelta, events: list[dict[str, Any]]) -> _Item:
        known = self._calls.get(delta.index)
        if known is not None:
            return known
        events += self._close()
        item = _Item("function_call", len(self.output), new_id("fc"))
        item.call_id, item.name = delta.id or new_id("call"), delta.name or ""
        self._item = self._calls[delta.index] = item
        self.output.append({})
        events.append(
            self._event(
                "response.output_item.added",
                output_index=item.index,
                item=self._call_item(item, "in_progress"),
            )
        )
        return item

    @staticmethod
    def _call_item(item: _Item, status: str) -> dict[str, Any]:
        arguments = "".join(item.parts)
        return {
            "id": item.id,
            "type": "function_call",
            "status": status,
            "call_id": item.call_id,
            "name": item.name,
            "arguments": arguments,
        }

    def _close(self) -> list[dict[str, Any]]:
        item, self._item = self._item, None
        if item is None:
            return []
        status = "incomplete" if self._reason == "length" else "completed"
        if item.kind == "function_call":
            done = self._call_item(item, status)
            events = [
                self._delta(
                    "response.function_call_arguments.done", item, arguments=done["arguments"], name=item.name
                )
            ]
        else:
            text = "".join(item.parts)
            if item.kind == "message":
                part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                events = [
                    self._delta("response.output_text.done", item, content_index=0, text=text, logprobs=[])
                ]
                done = {
                    "id": item.id,
                    "type": "message",
                    "role": "assistant",
                    "status": status,
                    "content": [part],
                }
            else:
                part = {"type": "reasoning_text", "text": text}
                events = [self._delta("response.reasoning_text.done", item, content_index=0, text=text)]
                done = {
                    "id": item.id,
                    "type": "reasoning",
                    "status": status,
                    "summary": [],
                    "content": [part],
                }
            events.append(self._delta("response.content_part.done", item, content_index=0, part=part))
        self.output[item.index] = done
        events.append(self._event("response.output_item.done", output_index=item.index, item=done))
        return events
