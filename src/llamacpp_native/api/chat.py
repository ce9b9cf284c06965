"""``Llama``'s chat: render messages (tools, media, response format), build requests, stream events."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping, Sequence
from typing import Any

from typing_extensions import Unpack

from llamacpp_native.api import choices, openai_shapes
from llamacpp_native.api.base import (
    INLINE_CHARS,
    GrammarLike,
    LlamaBase,
    LoraSpec,
    SamplingOptions,
    check_budget,
    off_loop,
    stop_list,
)
from llamacpp_native.api.chunk_shapers import ChatShaper
from llamacpp_native.api.openai_requests import (
    check_tools,
    normalise_tool_choice,
    schema_from_response_format,
)
from llamacpp_native.binding.sampling import GrammarSpec, ReasoningBudget
from llamacpp_native.chat.continuation import opening_of, plan_continuation
from llamacpp_native.chat.formats import template_for
from llamacpp_native.chat.media import MediaSource, has_media, split_media
from llamacpp_native.chat.multimodal import Bitmap, Multimodal, PromptMedia
from llamacpp_native.chat.templates import (
    TRIGGER_PATTERN,
    TRIGGER_PATTERN_FULL,
    TRIGGER_TOKEN,
    ChatTemplates,
    RenderedChat,
)
from llamacpp_native.engine.events import Event
from llamacpp_native.engine.output import ChatOutput, ReplyParser
from llamacpp_native.engine.request_stream import RequestStream
from llamacpp_native.engine.types import Cancellation, Chunk, GenerationRequest
from llamacpp_native.errors import MediaDecodeError, MultimodalError
from llamacpp_native.grammar.gbnf import json_schema_to_grammar, tighten_grammar


class LlamaChat(LlamaBase):
    # -- chat --------------------------------------------------------------------------------
    @property
    def chat_templates(self) -> ChatTemplates:
        """The chat templates in use (the GGUF's, or the fallback ``chat_format``)."""
        if self._templates is None:
            override = self.chat_template or template_for(
                self.chat_format, self.model.architecture, self.model.chat_template
            )
            self._templates = ChatTemplates(self.model, override)
        return self._templates

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        parallel_tool_calls: bool = False,
        reasoning_format: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        continue_final_message: bool | str | None = None,
        add_generation_prompt: bool | None = None,
    ) -> RenderedChat:
        """Render messages (and tools, response format) to a prompt, grammar and parser settings.

        A last assistant message is continued unless ``continue_final_message=False`` or
        ``add_generation_prompt=True`` (see
        :func:`llamacpp_native.chat.continuation.plan_continuation`).
        """
        check_tools(tools)
        continuation, generation_prompt = plan_continuation(
            messages, continue_final_message, add_generation_prompt
        )
        messages, media = self._split_media(messages)
        offered, choice = normalise_tool_choice(tools, tool_choice)
        schema = schema_from_response_format(response_format)
        if schema is not None:
            json_schema_to_grammar(schema)  # a clear GrammarError before rendering
        rendered = self.chat_templates.render(
            messages,
            tools=offered if choice != "none" else None,
            tool_choice=choice,
            parallel_tool_calls=parallel_tool_calls,
            json_schema=schema,
            reasoning_format=self.reasoning_format if reasoning_format is None else reasoning_format,
            chat_template_kwargs=chat_template_kwargs,
            continue_final_message=continuation,
            add_generation_prompt=generation_prompt,
        )
        if continuation:
            rendered = dataclasses.replace(rendered, opening=opening_of(messages[-1], continuation))
        if media:
            rendered = dataclasses.replace(rendered, media=tuple(media))
        if not rendered.grammar:
            return rendered
        grammar = tighten_grammar(
            rendered.grammar, forbid_free_text=choice == "required", single_call=not parallel_tool_calls
        )
        return dataclasses.replace(rendered, grammar=grammar)

    def chat_prompt_tokens(self, rendered: RenderedChat) -> list[int]:
        """The tokens a rendered chat is decoded as (with BOS where the model wants one).

        An image or audio clip counts its embeddings, each as a placeholder id.
        """
        return self._chat_prompt(rendered)[0]

    def _chat_prompt(self, rendered: RenderedChat) -> tuple[list[int], PromptMedia]:
        vocab = self.model.vocab
        bos = [vocab.bos] if vocab.add_bos else []  # llama.cpp strips the template's BOS when rendering
        if not rendered.media:
            prompt = self.tokenize(rendered.prompt, add_bos=False, special=True)
            return (bos + prompt if bos and prompt[:1] != bos else prompt), ()
        multimodal = self._projector()
        bitmaps = []
        try:
            for source in rendered.media:
                bitmaps.append(self._bitmap(multimodal, source))
            tokenized = multimodal.tokenize(rendered.prompt, bitmaps)
        finally:
            for bitmap in bitmaps:
                bitmap.close()
        if bos and tokenized.tokens[:1] != bos:
            tokenized = tokenized.with_prefix(bos)
        return tokenized.tokens, tokenized.media

    def _projector(self) -> Multimodal:
        if self.multimodal is None:
            raise MultimodalError(
                f"model {self.model.path.name} has no projector, so it cannot take images or audio: load "
                "one with Llama(..., mmproj_path='mmproj.gguf') (the mmproj file published with the model)"
            )
        return self.multimodal

    def _split_media(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[MediaSource]]:
        """Messages with images/audio as media markers, and the media's bytes (read per ``media_policy``)."""
        if not has_media(messages):
            return [dict(m) for m in messages], []
        return split_media(messages, self._projector().marker, self.media_policy)

    @staticmethod
    def _bitmap(multimodal: Multimodal, source: MediaSource) -> Bitmap:
        """Decode one medium and check it is the kind its content part said."""
        if source.kind == "audio" and not multimodal.supports_audio:
            raise multimodal._lacks("audio")
        bitmap = multimodal.media(source.data)
        if bitmap.is_audio != (source.kind == "audio"):
            bitmap.close()
            found = "audio" if source.kind == "image" else "an image"
            raise MediaDecodeError(f"an {source.kind} part holds {found}")
        return bitmap

    def chat_request(
        self,
        rendered: RenderedChat,
        *,
        max_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        grammar: GrammarLike = None,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        lora: LoraSpec | None = None,
        reasoning_budget: int | None = None,
        return_progress: bool = False,
        **options: Unpack[SamplingOptions],
    ) -> GenerationRequest:
        """The engine request for a rendered chat; ``lora`` and ``return_progress`` as in
        ``completion_request`` (the progress chunks carry the assistant role and no content).

        ``reasoning_budget`` (tokens; None: the instance's) caps a thinking model's
        reasoning: once spent, the template's end-of-thinking tag is forced.
        """
        spec = self._grammar_spec(grammar)
        if spec is None and rendered.grammar:
            patterns = [p for p in (_trigger_pattern(t) for t in rendered.grammar_triggers) if p is not None]
            tokens = [int(t["token"]) for t in rendered.grammar_triggers if t["type"] == TRIGGER_TOKEN]
            spec = GrammarSpec(
                rendered.grammar, "root", rendered.grammar_lazy, tuple(patterns), tuple(tokens)
            )
        sampling = self._sampling(options, 0.2, spec)
        budget = self.reasoning_budget if reasoning_budget is None else check_budget(reasoning_budget)
        if budget is not None and rendered.thinking_tags is not None:
            start, end = rendered.thinking_tags
            generation_prompt = rendered.parser_params["generation_prompt"]
            sampling = dataclasses.replace(
                sampling, reasoning=ReasoningBudget(start, end, budget, generation_prompt)
            )
        prompt, media = self._chat_prompt(rendered)
        if top_logprobs is not None and not (
            isinstance(top_logprobs, int) and not isinstance(top_logprobs, bool) and 0 <= top_logprobs <= 20
        ):
            raise ValueError(f"top_logprobs must be an integer from 0 to 20, got {top_logprobs!r}")
        n_logprobs = (top_logprobs or 0) if logprobs else None
        # A template-made grammar starts with the generation prompt, which is already in
        # the prompt: the grammar must step past it before sampling (as llama.cpp does).
        prefill = (
            rendered.parser_params["generation_prompt"] if grammar is None and spec and not spec.lazy else ""
        )
        prefill_tokens = self.tokenize(prefill, add_bos=False, special=True) if prefill else []
        return GenerationRequest(
            prompt,
            sampling,
            max_tokens,
            stop_list(stop) + rendered.additional_stops,
            n_logprobs,
            prefill_tokens,
            self._lora_set(lora),
            media,
            report_progress=return_progress,
        )

    def create_chat_completion(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: bool = False,
        parallel_tool_calls: bool = False,
        reasoning_format: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        cancellation: Cancellation | None = None,
        **kwargs: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Chat with OpenAI-style ``messages``; tool calls and JSON output grammar-constrained.

        Returns a ``chat.completion`` dict, or an iterator of ``chat.completion.chunk``
        dicts with ``stream=True``: content, ``reasoning_content`` and tool-call
        fragments arrive as they are generated.  ``parallel_tool_calls`` is off by
        default, as in llama-server.  Keyword arguments are those of ``chat_request``, and
        ``n``: that many choices (``index`` 0..n-1).
        """
        options = dict(
            kwargs,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
            parallel_tool_calls=parallel_tool_calls,
            reasoning_format=reasoning_format,
            chat_template_kwargs=chat_template_kwargs,
        )
        n = options.pop("n", 1)
        if n != 1 or n is True:
            parts = self._chat_choices(messages, options, choices.check_n(n), cancellation)
            dicts = choices.interleave(*parts.run())
            return dicts if stream else choices.collect(dicts, parts.collect_one)
        events = self.chat_events(messages, cancellation=cancellation, **options)
        chunks = _shaped_chat(events, ChatShaper(self.model_path))
        return chunks if stream else openai_shapes.collect_chat(chunks)

    async def acreate_chat_completion(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: bool = False,
        parallel_tool_calls: bool = False,
        reasoning_format: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """``create_chat_completion`` for asyncio: the event loop is never blocked (see ``achat_events``)."""
        options = dict(
            kwargs,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
            parallel_tool_calls=parallel_tool_calls,
            reasoning_format=reasoning_format,
            chat_template_kwargs=chat_template_kwargs,
        )
        n = options.pop("n", 1)
        if n != 1 or n is True:
            parts = await off_loop(
                _heavy_chat(messages, options), self._chat_choices, messages, options, choices.check_n(n)
            )
            dicts = choices.ainterleave(*parts.run())
            return dicts if stream else choices.collect([c async for c in dicts], parts.collect_one)
        events = await self.achat_events(messages, **options)
        chunks = _ashaped_chat(events, ChatShaper(self.model_path))
        if stream:
            return chunks
        return openai_shapes.collect_chat([c async for c in chunks])

    def chat_events(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        cancellation: Cancellation | None = None,
        **kwargs: Any,
    ) -> Generator[list[Event], None, None]:
        """Start a chat and iterate its typed events, one batch per engine chunk.

        Keyword arguments are those of ``create_chat_completion`` (tools,
        response_format, reasoning controls, sampling).  The request is checked and
        queued before this returns; closing the iterator cancels it.
        """
        request, output = self._chat(messages, kwargs)
        return _events(self.engine.stream(request, cancellation), output)

    async def achat_events(
        self, messages: Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> AsyncGenerator[list[Event], None]:
        """``chat_events`` for asyncio: ``await`` it for the events' async iterator.

        Rendering the template, tokenizing and compiling the grammar run in a worker
        thread (a short plain chat is prepared at once: less work than the hop), so the
        event loop is never blocked; bad input raises here, and the request is queued
        before this returns.
        """
        return _aevents(*await self.achat_stream(messages, **kwargs))

    async def achat_stream(
        self, messages: Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> tuple[RequestStream, ChatOutput]:
        """``achat_events``' two halves: the queued request's chunks and the processor that turns each
        into events, for a caller that also reads the chunks (their tokens, the prompt's cached part).

        Iterate the stream, pass each chunk to ``ChatOutput.feed``, and cancel the stream when done.
        """
        request, output = await off_loop(_heavy_chat(messages, kwargs), self._chat, messages, kwargs)
        return self.engine.submit(request), output

    def _chat(
        self, messages: Sequence[Mapping[str, Any]], kwargs: dict[str, Any]
    ) -> tuple[GenerationRequest, ChatOutput]:
        request, rendered = self._chat_rendered(messages, kwargs)
        return request, ChatOutput(_reply_parser(rendered))

    def _chat_choices(
        self,
        messages: Sequence[Mapping[str, Any]],
        kwargs: dict[str, Any],
        n: int,
        cancellation: Cancellation | None = None,
    ) -> choices.Choices:
        """Queue ``n`` choices of one chat, each with its own reply parser."""
        request, rendered = self._chat_rendered(messages, kwargs)
        parts = choices.Choices(openai_shapes.collect_chat, [choices.choice_requests(request, n)])
        response_id = openai_shapes.new_id("chatcmpl")
        for index in range(n):
            shaper = ChatShaper(self.model_path, index)
            shaper.id = response_id
            parts.add(_chat_shape(ChatOutput(_reply_parser(rendered)), shaper), shaper.start())
        parts.submit(self.engine)
        if cancellation is not None:
            for stream in parts.streams:
                cancellation.attach(stream)
        return parts

    def _chat_rendered(
        self, messages: Sequence[Mapping[str, Any]], kwargs: dict[str, Any]
    ) -> tuple[GenerationRequest, RenderedChat]:
        tools = kwargs.pop("tools", None)
        tool_choice = kwargs.pop("tool_choice", None)
        rendered = self.render_chat(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            response_format=kwargs.pop("response_format", None),
            parallel_tool_calls=kwargs.pop("parallel_tool_calls", False),
            reasoning_format=kwargs.pop("reasoning_format", None),
            chat_template_kwargs=kwargs.pop("chat_template_kwargs", None),
            continue_final_message=kwargs.pop("continue_final_message", None),
            add_generation_prompt=kwargs.pop("add_generation_prompt", None),
        )
        return self.chat_request(rendered, **kwargs), rendered


def _reply_parser(rendered: RenderedChat) -> ReplyParser | None:
    """The parser of a reply that needs one; a continued turn's own text is read first, unsent."""
    if not rendered.needs_parser:
        return None
    parser = ReplyParser(rendered.parser_params)
    if rendered.opening is not None:
        parser.skip_opening(rendered.opening)
    return parser


def _chat_shape(output: ChatOutput, shaper: ChatShaper) -> choices.Shape:
    """One choice's renderer: engine chunk -> events -> chunk dicts."""
    return lambda chunk: shaper.feed(output.feed(chunk))


def _heavy_chat(messages: Sequence[Mapping[str, Any]], kwargs: Mapping[str, Any]) -> bool:
    """Whether preparing a chat is real work: tools or a schema (grammar), media, or long text."""
    if kwargs.get("tools") or kwargs.get("response_format") or kwargs.get("grammar"):
        return True
    size = 0
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str | None):
            return True  # content parts: images, audio, or text to join
        size += len(content or "")
    return size > INLINE_CHARS


def _trigger_pattern(trigger: Mapping[str, Any]) -> str | None:
    kind, value = trigger["type"], trigger["value"]
    if kind == TRIGGER_PATTERN:
        return str(value)
    if kind == TRIGGER_PATTERN_FULL:
        return ("" if value.startswith("^") else "^") + value + ("" if value.endswith("$") else "$")
    if kind == TRIGGER_TOKEN:
        return None
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}" else c for c in value)  # a literal word


def _events(chunks: Iterator[Chunk], output: ChatOutput) -> Generator[list[Event], None, None]:
    """A chat's event batches from its engine chunks; closing this iterator cancels the request."""
    try:
        for chunk in chunks:
            yield output.feed(chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


async def _aevents(stream: RequestStream, output: ChatOutput) -> AsyncGenerator[list[Event], None]:
    """``_events`` over an awaited stream; closing or cancelling it cancels the request."""
    try:
        async for chunk in stream:
            yield output.feed(chunk)
    finally:
        stream.cancel()


def _shaped_chat(events: Iterator[list[Event]], shaper: ChatShaper) -> Iterator[dict[str, Any]]:
    """OpenAI chunk dicts from a chat's events; closing this iterator cancels the request."""
    try:
        yield from shaper.start()
        for batch in events:
            yield from shaper.feed(batch)
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


async def _ashaped_chat(
    events: AsyncGenerator[list[Event], None], shaper: ChatShaper
) -> AsyncIterator[dict[str, Any]]:
    """``_shaped_chat`` over async events."""
    try:
        for item in shaper.start():
            yield item
        async for batch in events:
            for item in shaper.feed(batch):
                yield item
    finally:
        await events.aclose()
