"""``Llama``: the high-level, OpenAI-shaped API (same call shapes as llama-cpp-python)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import threading
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias, TypedDict, TypeVar

from typing_extensions import Unpack

from llamacpp_native.api import openai_shapes
from llamacpp_native.api.chunk_shapers import ChatShaper, CompletionShaper
from llamacpp_native.api.openai_requests import (
    check_tools,
    normalise_tool_choice,
    schema_from_response_format,
)
from llamacpp_native.binding._library import capture_log, set_verbose
from llamacpp_native.binding.context import Context
from llamacpp_native.binding.lora import LoraAdapter, LoraSet, normalise_lora
from llamacpp_native.binding.model import Model, ProgressCallback
from llamacpp_native.binding.offload import OffloadReport
from llamacpp_native.binding.sampling import DEFAULT_SEED, GrammarSpec, ReasoningBudget, SamplingParams
from llamacpp_native.chat.formats import template_for
from llamacpp_native.chat.media import LOCAL, MediaPolicy, MediaSource, has_media, split_media
from llamacpp_native.chat.multimodal import Bitmap, Multimodal, PromptMedia
from llamacpp_native.chat.templates import (
    TRIGGER_PATTERN,
    TRIGGER_PATTERN_FULL,
    TRIGGER_TOKEN,
    ChatTemplates,
    RenderedChat,
    check_reasoning_format,
)
from llamacpp_native.engine.events import Event
from llamacpp_native.engine.loop import Engine
from llamacpp_native.engine.output import ChatOutput, ReplyParser
from llamacpp_native.engine.request_stream import RequestStream
from llamacpp_native.engine.types import (
    Cancellation,
    Chunk,
    GenerationRequest,
    GenerationResult,
)
from llamacpp_native.errors import (
    ContextOverflowError,
    LoraError,
    MediaDecodeError,
    MultimodalError,
)
from llamacpp_native.grammar.gbnf import LlamaGrammar, json_schema_to_grammar, tighten_grammar

GrammarLike: TypeAlias = LlamaGrammar | str | None
LoraSpec: TypeAlias = Mapping[str | os.PathLike[str] | LoraAdapter, float]
"""Per-request LoRA adapters: ``{name, path or LoraAdapter: scale}``; ``{}`` is the base model."""


class SamplingOptions(TypedDict, total=False):
    """Sampling keyword arguments of completions and chat, with llama-cpp-python's names.

    Defaults: top_k 40, top_p 0.95, min_p 0.05, typical_p 1.0, no penalties,
    the instance's seed, no logit bias; temperature 0.8 (completions) or 0.2 (chat).
    """

    temperature: float
    top_p: float
    min_p: float
    typical_p: float
    top_k: int
    frequency_penalty: float
    presence_penalty: float
    repeat_penalty: float
    seed: int | None
    logit_bias: Mapping[int | str, float] | None


def _trigger_pattern(trigger: Mapping[str, Any]) -> str | None:
    kind, value = trigger["type"], trigger["value"]
    if kind == TRIGGER_PATTERN:
        return str(value)
    if kind == TRIGGER_PATTERN_FULL:
        return ("" if value.startswith("^") else "^") + value + ("" if value.endswith("$") else "$")
    if kind == TRIGGER_TOKEN:
        return None
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}" else c for c in value)  # a literal word


class Llama:
    """A local GGUF model with llama-cpp-python's call shapes, OpenAI-shaped results.

    The model loads in the constructor.  One instance is safe to use from many
    threads (requests are serialised per context); ``create_completions`` runs
    several prompts as parallel sequences.  ``close()`` frees everything.

    LoRA adapters: ``lora_path`` (with ``lora_scale``) or ``lora_adapters=[(path,
    scale), ...]`` are loaded with the model and apply to every request that does
    not say otherwise; a request's ``lora={name_or_path: scale}`` replaces them for
    that request only (see ``Engine`` for how requests under different adapters
    share the decode loop).

    Thinking models: ``reasoning_format="auto"`` (the default) returns a reply's
    thinking apart from its content (``reasoning_content``), ``"none"`` leaves it
    in the content; ``reasoning_budget`` caps the thinking in tokens.  Each can
    also be given per request, with ``chat_template_kwargs`` (for example
    ``{"enable_thinking": False}``).  ``chat_template`` replaces the model's own
    Jinja chat template.

    Images and audio: ``mmproj_path`` (or llama-cpp-python's ``chat_handler=
    Llava15ChatHandler(clip_model_path=...)``) loads the model's projector, and
    chat messages may then carry OpenAI ``image_url`` parts (``data:`` URLs, local
    paths or ``file://``) and, where the projector has an audio encoder,
    ``input_audio`` parts.  ``media_policy`` says where their bytes may come from;
    remote ``http(s)`` URLs are refused unless it allows them.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_gpu_layers: int = 0,
        main_gpu: int = 0,
        split_mode: str = "layer",
        tensor_split: Sequence[float] | None = None,
        use_mmap: bool = True,
        use_mlock: bool = False,
        vocab_only: bool = False,
        f16_kv: bool = True,
        type_k: str | None = None,
        type_v: str | None = None,
        flash_attn: bool | None = None,
        offload_kqv: bool = True,
        rpc_servers: Sequence[str] | None = None,
        use_extra_bufts: bool = True,
        rope_freq_base: float = 0.0,
        rope_freq_scale: float = 0.0,
        seed: int = DEFAULT_SEED,
        chat_format: str | None = None,
        chat_template: str | None = None,
        reasoning_format: str = "auto",
        reasoning_budget: int | None = None,
        embedding: bool = False,
        pooling: str | None = None,
        n_parallel: int = 4,
        last_n_tokens_size: int = 64,
        verbose: bool = False,
        progress: ProgressCallback | None = None,
        lora_path: str | os.PathLike[str] | None = None,
        lora_scale: float = 1.0,
        lora_adapters: Sequence[tuple[str | os.PathLike[str], float]] | None = None,
        lora_base: str | None = None,
        mmproj_path: str | os.PathLike[str] | None = None,
        chat_handler: Any = None,
        media_policy: MediaPolicy = LOCAL,
    ) -> None:
        set_verbose(verbose)
        self.reasoning_format = check_reasoning_format(reasoning_format)
        """How a thinking model's reasoning is returned: ``auto`` (as ``reasoning_content``) or ``none``."""
        self.reasoning_budget = _check_budget(reasoning_budget, unlimited=-1)
        """Thinking tokens a reply may spend before the end-of-thinking tag is forced (None: no limit)."""
        self.chat_template = chat_template
        if lora_base is not None:
            warnings.warn(
                "lora_base is deprecated and ignored: a GGUF LoRA adapter applies to model_path itself",
                DeprecationWarning,
                stacklevel=2,
            )
        adapter_paths = ([(lora_path, lora_scale)] if lora_path else []) + list(lora_adapters or [])
        if adapter_paths and vocab_only:
            raise ValueError("LoRA adapters need the model's weights: not with vocab_only=True")
        projector = mmproj_path or getattr(chat_handler, "clip_model_path", None)
        if projector and vocab_only:
            raise ValueError("a projector (mmproj_path) needs the model's weights: not with vocab_only=True")
        self.model_path = str(model_path)
        self.model = Model(
            model_path,
            n_gpu_layers=n_gpu_layers,
            main_gpu=main_gpu,
            split_mode=split_mode,
            tensor_split=tensor_split,
            use_mmap=use_mmap,
            use_mlock=use_mlock,
            vocab_only=vocab_only,
            progress=progress,
            rpc_servers=rpc_servers,
            use_extra_bufts=use_extra_bufts,
        )
        self.seed = seed
        self.last_n_tokens_size = last_n_tokens_size
        self.chat_format = chat_format
        self._context_kwargs: dict[str, Any] = dict(
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_ubatch,
            n_threads=n_threads,
            n_threads_batch=n_threads_batch,
            f16_kv=f16_kv,
            type_k=type_k,
            type_v=type_v,
            flash_attn=flash_attn,
            offload_kqv=offload_kqv,
            rope_freq_base=rope_freq_base,
            rope_freq_scale=rope_freq_scale,
        )
        self._context_logs: list[list[str]] = []
        """llama.cpp's log of creating each context: where its KV cache and compute buffers went."""
        self._pooling = pooling
        self._n_parallel = n_parallel
        self._engine: Engine | None = None
        self._embedder: Context | None = None
        self._embed_lock = threading.Lock()
        self._templates: ChatTemplates | None = None
        self._lora_lock = threading.Lock()
        self._loras_by_path: dict[str, LoraAdapter] = {}
        self._lora_names: dict[str, LoraAdapter] = {}
        self.media_policy = media_policy
        """Where images and audio in messages may come from (local files yes, the network no)."""
        self.multimodal: Multimodal | None = None
        """The projector (``mmproj_path``) that lets messages carry images, or audio; None without one."""
        if not vocab_only:
            try:
                default_lora = [(self.load_lora(path), scale) for path, scale in adapter_paths]
                if projector:
                    self.multimodal = Multimodal(self.model, projector, n_threads=n_threads)
            except BaseException:
                self.model.close()
                raise
            with capture_log() as context_log:
                self._engine = Engine(
                    self.model, n_slots=n_parallel, lora=default_lora, **self._context_kwargs
                )
            self._context_logs.append(context_log)
            if embedding:
                self._embedding_context()

    # -- lifetime & basics ----------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The generation engine (raises for a vocab-only model; ``RpcServerError`` if a worker stopped)."""
        if self._engine is None:
            raise ValueError("this Llama was loaded with vocab_only=True; it can only tokenize")
        if self.model.rpc_servers:  # ggml would abort the process on the next decode
            self.model.check_rpc_servers()
        return self._engine

    @property
    def n_ctx(self) -> int:
        """The context window in tokens."""
        return self.engine.n_ctx

    def offload_report(self) -> OffloadReport:
        """Where llama.cpp put the layers, weights, KV cache and compute buffers, per device.

        ``print(llama.offload_report())`` shows it; ``.layers`` counts layers per
        device (e.g. ``{"CUDA0": 19}`` with ``n_gpu_layers=-1`` on one GPU).
        """
        return self.model.offload_report(self._context_logs)

    def close(self) -> None:
        """Free the contexts, projector, chat templates and model.  Safe to call twice, from any thread.

        New calls get ``ClosedError`` at once; calls in flight (an embedding, a
        tokenization, a template render, an image encode) finish or fail with
        ``ClosedError`` before anything is freed, and running generations end with
        ``ClosedError``.  From inside one of this model's calls (a callback or signal
        handler during it) it raises ``CloseInsideCallError`` and changes nothing.
        """
        self.model.close()  # closes the projector and the templates too, after their calls in flight
        if self._templates is not None:
            self._templates.close()
        if self.multimodal is not None:
            self.multimodal.close()

    def __enter__(self) -> Llama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- LoRA adapters ----------------------------------------------------------------------
    def load_lora(self, path: str | os.PathLike[str], *, name: str | None = None) -> LoraAdapter:
        """Load a LoRA adapter (once per file) and name it for requests' ``lora={name: scale}``.

        ``name`` defaults to the file's stem (``french`` for ``/x/french.gguf``) when
        no other adapter has it.  Raises ``LoraError`` naming the path for a bad file.
        """
        real = os.path.realpath(path)
        with self._lora_lock:
            adapter = self._loras_by_path.get(real)
            if adapter is None or adapter.closed:
                adapter = self._loras_by_path[real] = self.model.load_lora(path)
            key = Path(path).stem if name is None else name
            holder = self._lora_names.get(key)
            if holder is None or holder.closed:
                self._lora_names[key] = adapter
            elif holder is not adapter and name is not None:
                raise ValueError(f"the LoRA adapter name {name!r} is already taken by {holder.path}")
            return adapter

    @property
    def lora_adapters(self) -> dict[str, LoraAdapter]:
        """The named adapters loaded so far (``load_lora``, the constructor, requests' paths)."""
        with self._lora_lock:
            return {name: a for name, a in self._lora_names.items() if not a.closed}

    @property
    def lora(self) -> LoraSet:
        """The adapters (with scales) of requests that name none: those the constructor loaded."""
        return self.engine.lora

    def _lora_set(self, lora: LoraSpec | None) -> LoraSet | None:
        """A request's ``lora=`` as the engine takes it (None: the instance's adapters)."""
        if lora is None:
            return None
        pairs = []
        for key, scale in lora.items():
            if isinstance(key, LoraAdapter):
                adapter = key
            elif isinstance(key, str) and key in self._lora_names and not self._lora_names[key].closed:
                adapter = self._lora_names[key]
            elif os.path.exists(key):
                adapter = self.load_lora(key)
            else:
                raise LoraError(
                    f"no LoRA adapter named {os.fspath(key)!r} (loaded: {sorted(self.lora_adapters)}), "
                    "and no file at that path"
                )
            pairs.append((adapter, scale))
        return normalise_lora(pairs)

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text (bytes or str) -> token ids."""
        return self.model.vocab.tokenize(text, add_special=add_bos, parse_special=special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """Token ids -> bytes."""
        return self.model.vocab.detokenize_bytes(tokens, special)

    def token_eos(self) -> int:
        """The end-of-sequence token id."""
        return self.model.vocab.eos

    def token_bos(self) -> int:
        """The beginning-of-sequence token id."""
        return self.model.vocab.bos

    # -- requests --------------------------------------------------------------------------
    def _sampling(
        self, options: SamplingOptions, temperature: float, grammar: GrammarSpec | None
    ) -> SamplingParams:
        unknown = sorted(set(options) - set(SamplingOptions.__annotations__))
        if unknown:
            known = sorted(SamplingOptions.__annotations__)
            raise TypeError(f"unknown sampling option(s) {unknown}; known: {known}")
        seed = options.get("seed")
        bias = options.get("logit_bias") or {}
        return SamplingParams(
            temperature=options.get("temperature", temperature),
            top_k=options.get("top_k", 40),
            top_p=options.get("top_p", 0.95),
            min_p=options.get("min_p", 0.05),
            typical_p=options.get("typical_p", 1.0),
            repeat_penalty=options.get("repeat_penalty", 1.0),
            frequency_penalty=options.get("frequency_penalty", 0.0),
            presence_penalty=options.get("presence_penalty", 0.0),
            penalty_last_n=self.last_n_tokens_size,
            seed=self.seed if seed is None else seed,
            logit_bias={int(k): float(v) for k, v in bias.items()},
            grammar=grammar,
        )

    @staticmethod
    def _grammar_spec(grammar: GrammarLike) -> GrammarSpec | None:
        if grammar is None:
            return None
        if isinstance(grammar, LlamaGrammar):
            return GrammarSpec(grammar.text, grammar.root)
        return GrammarSpec(LlamaGrammar(grammar).text)

    def _prompt_tokens(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                tokens = [self.model.vocab.bos] if self.model.vocab.add_bos else []
                if not tokens:
                    raise ValueError("the prompt is empty")
                return tokens
            return self.tokenize(prompt, add_bos=True, special=True)
        tokens = list(prompt)
        self.model.vocab.check_tokens(tokens)
        return tokens

    def completion_request(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int | None = 16,
        stop: str | Sequence[str] | None = None,
        grammar: GrammarLike = None,
        logprobs: int | None = None,
        lora: LoraSpec | None = None,
        **options: Unpack[SamplingOptions],
    ) -> GenerationRequest:
        """Build the engine request that ``create_completion`` would run (temperature 0.8 by default).

        ``lora={name_or_path: scale}`` runs this request under those LoRA adapters
        instead of the instance's (``{}``: the base model); a path not loaded yet is
        loaded and kept for later requests.
        """
        sampling = self._sampling(options, 0.8, self._grammar_spec(grammar))
        prompt_tokens = self._prompt_tokens(prompt)
        return GenerationRequest(
            prompt_tokens, sampling, max_tokens, _stops(stop), logprobs, lora=self._lora_set(lora)
        )

    # -- completions --------------------------------------------------------------------------
    def create_completion(
        self,
        prompt: str | Sequence[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        echo: bool = False,
        stream: bool = False,
        cancellation: Cancellation | None = None,
        **kwargs: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Complete ``prompt``; a dict, or an iterator of chunk dicts with ``stream=True``.

        ``suffix`` is appended to the generated text; ``echo`` prepends the prompt.
        Other keyword arguments are those of ``completion_request``.  Calls from
        many threads run at once, in the engine's shared batch.
        """
        request, shaper = self._completion(prompt, suffix, max_tokens, echo, kwargs)
        chunks = _shaped(self.engine.stream(request, cancellation), shaper)
        return chunks if stream else openai_shapes.collect_completion(chunks, request.logprobs is not None)

    __call__ = create_completion

    async def acreate_completion(
        self,
        prompt: str | Sequence[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        echo: bool = False,
        stream: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """``create_completion`` for asyncio: the event loop is never blocked.

        Tokenizing a long prompt runs in a worker thread; the generation is then
        awaited without one.  With ``stream=True`` it returns an async iterator; closing it or
        cancelling the task frees the sequence at the engine's next step.
        """
        request, shaper = await _off_loop(
            isinstance(prompt, str) and len(prompt) > INLINE_CHARS,
            self._completion,
            prompt,
            suffix,
            max_tokens,
            echo,
            kwargs,
        )
        chunks = _ashaped(self.engine.submit(request), shaper)
        if stream:
            return chunks
        return openai_shapes.collect_completion([c async for c in chunks], request.logprobs is not None)

    def _completion(
        self, prompt: str | Sequence[int], suffix: str | None, max_tokens: int | None, echo: bool, kwargs: Any
    ) -> tuple[GenerationRequest, CompletionShaper]:
        request = self.completion_request(prompt, max_tokens=max_tokens, **kwargs)
        prefix = (
            (prompt if isinstance(prompt, str) else self.detokenize(prompt).decode("utf-8", "replace"))
            if echo
            else ""
        )
        return request, CompletionShaper(self.model_path, prefix, suffix or "")

    def create_completions(
        self,
        prompts: Sequence[str | Sequence[int]],
        on_chunk: Callable[[int, Chunk], None] | None = None,
        cancellation: Cancellation | None = None,
        **kwargs: Any,
    ) -> list[GenerationResult]:
        """Complete several prompts as parallel sequences in shared batches.

        ``on_chunk(index, chunk)`` receives text as it is produced; ``cancellation``
        stops every sequence.  Other keyword arguments are those of ``completion_request``.
        """
        requests = [self.completion_request(p, **kwargs) for p in prompts]
        return self.engine.generate_many(requests, on_chunk, cancellation)

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
    ) -> RenderedChat:
        """Render messages (and tools, response format) to a prompt, grammar and parser settings."""
        check_tools(tools)
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
        )
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
        **options: Unpack[SamplingOptions],
    ) -> GenerationRequest:
        """The engine request for a rendered chat; ``lora`` as in ``completion_request``.

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
        budget = self.reasoning_budget if reasoning_budget is None else _check_budget(reasoning_budget)
        if budget is not None and rendered.thinking_tags is not None:
            start, end = rendered.thinking_tags
            generation_prompt = rendered.parser_params["generation_prompt"]
            sampling = dataclasses.replace(
                sampling, reasoning=ReasoningBudget(start, end, budget, generation_prompt)
            )
        prompt, media = self._chat_prompt(rendered)
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
            _stops(stop) + rendered.additional_stops,
            n_logprobs,
            prefill_tokens,
            self._lora_set(lora),
            media,
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
        default, as in llama-server.  Keyword arguments are those of ``chat_request``.
        """
        events = self.chat_events(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
            parallel_tool_calls=parallel_tool_calls,
            reasoning_format=reasoning_format,
            chat_template_kwargs=chat_template_kwargs,
            cancellation=cancellation,
            **kwargs,
        )
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
        events = await self.achat_events(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
            parallel_tool_calls=parallel_tool_calls,
            reasoning_format=reasoning_format,
            chat_template_kwargs=chat_template_kwargs,
            **kwargs,
        )
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
        request, output = await _off_loop(_heavy_chat(messages, kwargs), self._chat, messages, kwargs)
        return _aevents(self.engine.submit(request), output)

    def _chat(
        self, messages: Sequence[Mapping[str, Any]], kwargs: dict[str, Any]
    ) -> tuple[GenerationRequest, ChatOutput]:
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
        )
        request = self.chat_request(rendered, **kwargs)
        parser = ReplyParser(rendered.parser_params) if rendered.needs_parser else None
        return request, ChatOutput(parser)

    # -- embeddings --------------------------------------------------------------------------
    def _embedding_context(self) -> Context:
        if self._embedder is None:
            pooling = self._pooling or ("unspecified" if self._model_pooling() else "mean")
            kwargs = dict(self._context_kwargs)
            kwargs["n_ubatch"] = kwargs["n_batch"]
            with capture_log() as context_log:
                self._embedder = Context(
                    self.model, embeddings=True, pooling=pooling, n_seq_max=self._n_parallel, **kwargs
                )
            self._context_logs.append(context_log)
        return self._embedder

    def _model_pooling(self) -> bool:
        return f"{self.model.architecture}.pooling_type" in self.model.metadata

    def embed(
        self, input: str | Sequence[str], normalize: bool = False, truncate: bool = True
    ) -> list[float] | list[list[float]]:
        """Embed one text (-> one vector) or many (-> one vector per text); ``n_embd`` floats each."""
        if isinstance(input, str):
            return self._embed_texts([input], normalize, truncate)[0][0]
        return self._embed_texts(list(input), normalize, truncate)[0]

    def _embed_texts(
        self, texts: list[str], normalize: bool, truncate: bool
    ) -> tuple[list[list[float]], int]:
        if self.model.rpc_servers:  # a stopped worker: ggml would abort the process in the decode
            self.model.check_rpc_servers()
        with self._embed_lock:
            context = self._embedding_context()
            limit = context.n_batch
            token_lists = []
            for text in texts:
                tokens = self.tokenize(text, add_bos=True) or [self.model.vocab.bos]
                if len(tokens) > limit:
                    if not truncate:
                        raise ContextOverflowError(
                            f"a text of {len(tokens)} tokens exceeds the embedding batch of {limit} tokens"
                        )
                    tokens = tokens[:limit]
                token_lists.append(tokens)
            vectors: list[list[float]] = []
            group: list[list[int]] = []
            for tokens in token_lists + [[]]:
                full = sum(map(len, group)) + len(tokens) > limit or len(group) == context.n_seq_max
                if group and (not tokens or full):
                    vectors.extend(self._embed_group(context, group))
                    group = []
                if tokens:
                    group.append(tokens)
            if normalize:
                vectors = [_unit(v) for v in vectors]
            return vectors, sum(map(len, token_lists))

    @staticmethod
    def _embed_group(context: Context, group: list[list[int]]) -> list[list[float]]:
        with context.gate:  # one call for close(): it waits for the whole group, or it fails first
            context.kv_clear()
            indices = context.decode_many(
                [(tokens, 0, seq) for seq, tokens in enumerate(group)], all_outputs=True
            )
            vectors = [context.embedding(seq, index) for seq, index in enumerate(indices)]
            context.kv_clear()
        return vectors

    def create_embedding(self, input: str | Sequence[str], model: str | None = None) -> dict[str, Any]:
        """OpenAI-shaped embeddings response."""
        texts = [input] if isinstance(input, str) else list(input)
        vectors, n_tokens = self._embed_texts(texts, False, True)
        return openai_shapes.embedding_response(model or self.model_path, vectors, n_tokens)


INLINE_CHARS = 2000
"""Prompts up to this many characters are tokenized (and short plain chats rendered) on the event
loop itself: well under a millisecond, less than the hop to a worker thread costs under load."""

T = TypeVar("T")


async def _off_loop(heavy: bool, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` in a worker thread when ``heavy``, else right here (it is too short to matter)."""
    return await asyncio.to_thread(work, *args) if heavy else work(*args)


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


def _shaped(chunks: Iterator[Chunk], shaper: CompletionShaper) -> Iterator[dict[str, Any]]:
    """OpenAI chunk dicts from engine chunks; closing this iterator cancels the request."""
    try:
        yield from shaper.start()
        for chunk in chunks:
            yield from shaper.feed(chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


async def _ashaped(stream: RequestStream, shaper: CompletionShaper) -> AsyncIterator[dict[str, Any]]:
    """``_shaped`` over an awaited stream; closing or cancelling it cancels the request."""
    try:
        for item in shaper.start():
            yield item
        async for chunk in stream:
            for item in shaper.feed(chunk):
                yield item
    finally:
        stream.cancel()


def _check_budget(budget: int | None, unlimited: int | None = None) -> int | None:
    """A reasoning budget in tokens (None, or ``unlimited`` where allowed: no limit), or a ``ValueError``."""
    if budget is None or (unlimited is not None and budget == unlimited):
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        allowed = " (or -1 for no limit)" if unlimited is not None else " (or None for no limit)"
        raise ValueError(f"reasoning_budget must be a number of tokens >= 0{allowed}, got {budget!r}")
    return budget


def _stops(stop: str | Sequence[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector
