"""One request's output processor: engine chunks in, typed events out.

Plain chat text passes straight through as ``TextDelta``s.  When the reply may
hold tool calls, thinking or a wrapped JSON answer, llama.cpp's own chat parser
reads it incrementally in C++ (``lcpp_chat_stream``): per chunk one native call
returns only what changed, so the cost per token does not grow with the reply.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from llamacpp_native.binding._library import ffi, lib, take_message
from llamacpp_native.chat.continuation import Opening
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
from llamacpp_native.engine.types import Chunk
from llamacpp_native.errors import ChatTemplateError


class ReplyParser:
    """llama.cpp's chat parser over one growing reply, its state held natively."""

    def __init__(self, parser_params: Mapping[str, Any]) -> None:
        error = ffi.new("char **")
        raw = lib.lcpp_chat_stream_new(json.dumps(dict(parser_params)).encode(), error)
        if raw == ffi.NULL:
            raise ChatTemplateError(f"cannot load the chat parser: {take_message(error)}")
        self._handle = ffi.gc(raw, lib.lcpp_chat_stream_free)
        self._deltas = ffi.new("const lcpp_chat_delta **")
        self._error = ffi.new("char **")
        self._opening: Opening | None = None
        self._left = ""

    def feed(self, text: str, mode: int, out: list[Event]) -> None:
        """Append ``text`` (``mode``: more to come, cut off, or the end) and add its deltas to ``out``."""
        data = text.encode()
        count = lib.lcpp_chat_stream_feed(self._handle, data, len(data), mode, self._deltas, self._error)
        if count < 0:
            raise ChatTemplateError(f"parsing the reply failed: {take_message(self._error)}")
        deltas = self._deltas[0]
        for i in range(count):
            delta = deltas[i]
            body = ffi.string(delta.text).decode("utf-8", "replace")
            if delta.kind == lib.LCPP_DELTA_CONTENT:
                out.append(TextDelta(body))
            elif delta.kind == lib.LCPP_DELTA_REASONING:
                out.append(ReasoningDelta(body))
            else:
                name = ffi.string(delta.name).decode("utf-8", "replace")
                out.append(
                    ToolCallDelta(
                        delta.index,
                        body,
                        ffi.string(delta.id).decode() or None if name else None,
                        name or None,
                    )
                )

    def skip_opening(self, opening: Opening) -> None:
        """Leave out of the events the reply's opening that the prompt already holds (a
        continued assistant turn): llama.cpp's parser reads the reply from the turn's start,
        and the events carry only what the model adds."""
        self._opening = opening
        self._left = opening.reasoning if opening.in_reasoning else opening.content
        self.feed = self._feed_skipping  # type: ignore[method-assign]  # until the opening is past

    def _feed_skipping(self, text: str, mode: int, out: list[Event]) -> None:
        start = len(out)
        ReplyParser.feed(self, text, mode, out)
        self._skip(out, start)
        if self._opening is None:
            del self.feed  # back to the plain method: nothing more per chunk

    def _skip(self, out: list[Event], start: int) -> None:
        """Drop the opening from the events from ``start`` on: the turn's closed reasoning,
        and the continued part's text as far as the events repeat it."""
        opening = self._opening
        assert opening is not None
        part = ReasoningDelta if opening.in_reasoning else TextDelta
        kept = out[:start]
        for event in out[start:]:
            if self._opening is not None:
                if isinstance(event, ReasoningDelta) and part is TextDelta:
                    continue
                if isinstance(event, part):
                    left, text = self._left, event.text
                    same = len(os.path.commonprefix([left, text]))
                    if same == len(text) and same < len(left):
                        self._left = left[same:]
                        continue
                    event = part(text[same:])
                self._opening = None
                if isinstance(event, TextDelta | ReasoningDelta) and not event.text:
                    continue
            kept.append(event)
        out[:] = kept

    @property
    def tool_calls(self) -> int:
        """How many tool calls the reply holds as parsed so far."""
        return int(lib.lcpp_chat_stream_tool_calls(self._handle))


class ChatOutput:
    """Turns one chat request's engine chunks into events.

    ``parser`` is None for a reply that is plain text (no tools, no schema, no
    thinking to separate).  A reply cut off by ``max_tokens`` inside a tool call
    keeps the partial call and finishes with ``length``, as OpenAI does; a reply
    whose tool-call text turns out malformed at its end is content, finishing
    with ``stop``.
    """

    __slots__ = ("_parser",)

    def __init__(self, parser: ReplyParser | None) -> None:
        self._parser = parser

    def feed(self, chunk: Chunk) -> list[Event]:
        """The events of one engine chunk (the last one ends with ``Finish`` and ``Usage``)."""
        if chunk.prompt_processed is not None:
            return [PromptProgress(chunk.prompt_tokens, chunk.cached_tokens, chunk.prompt_processed)]
        events: list[Event] = []
        parser = self._parser
        if chunk.text:
            if parser is None:
                events.append(TextDelta(chunk.text))
            else:
                parser.feed(chunk.text, lib.LCPP_FEED_MORE, events)
        if chunk.logprobs:
            events.append(LogprobsDelta(chunk.logprobs))
        reason = chunk.finish_reason
        if reason is not None:
            if parser is not None:
                cut = reason == "length"
                parser.feed("", lib.LCPP_FEED_CUT if cut else lib.LCPP_FEED_END, events)
                if not cut and parser.tool_calls:
                    reason = "tool_calls"
            events.append(Finish(reason))
            events.append(
                Usage(
                    chunk.prompt_tokens,
                    chunk.completion_tokens,
                    chunk.cached_tokens,
                    chunk.draft_tokens,
                    chunk.draft_accepted,
                )
            )
        return events
