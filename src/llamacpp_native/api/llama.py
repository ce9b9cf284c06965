"""``Llama``: the high-level, OpenAI-shaped API (same call shapes as llama-cpp-python)."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from typing_extensions import Unpack

from llamacpp_native.api import choices, openai_shapes
from llamacpp_native.api.base import (
    INLINE_CHARS,
    GrammarLike,
    LoraSpec,
    SamplingOptions,
    check_budget,
    off_loop,
    stop_list,
)
from llamacpp_native.api.chat import LlamaChat
from llamacpp_native.api.chunk_shapers import CompletionShaper
from llamacpp_native.api.embeddings import LlamaEmbeddings
from llamacpp_native.api.infill import LlamaInfill
from llamacpp_native.api.rerank import LlamaRerank
from llamacpp_native.binding._library import capture_log, set_verbose
from llamacpp_native.binding.context import Context
from llamacpp_native.binding.lora import LoraAdapter
from llamacpp_native.binding.model import Model, ProgressCallback
from llamacpp_native.binding.sampling import DEFAULT_SEED
from llamacpp_native.chat.media import LOCAL, MediaPolicy
from llamacpp_native.chat.multimodal import Multimodal
from llamacpp_native.chat.templates import ChatTemplates, check_reasoning_format
from llamacpp_native.engine.core import Engine
from llamacpp_native.engine.request_stream import RequestStream
from llamacpp_native.engine.speculative import as_speculation
from llamacpp_native.engine.types import Cancellation, Chunk, GenerationRequest, GenerationResult


class Llama(LlamaChat, LlamaRerank, LlamaEmbeddings, LlamaInfill):
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

    Parallel requests: ``n_parallel`` sequences share the ``n_ctx`` tokens of one KV cache,
    and one request may use all of them; ``n_ctx_per_slot`` caps each request (prompt and
    output) at that many tokens, like llama-server's per-slot context, and ``n_ctx`` then
    reports the cap.

    Speculative decoding: ``draft_model`` is a path to a smaller GGUF with the same
    tokenizer (or ``DraftModel(path, num_pred_tokens=...)``), or
    ``PromptLookupDecoding()`` for n-gram lookup in the prompt and reply with no draft
    model, as in llama-cpp-python.  The output is exactly what decoding without it
    gives; ``usage.completion_tokens_details`` counts the guesses kept and dropped.
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
        temperature: float | None = None,
        chat_format: str | None = None,
        chat_template: str | None = None,
        reasoning_format: str = "auto",
        reasoning_budget: int | None = None,
        embedding: bool = False,
        pooling: str | None = None,
        n_parallel: int = 4,
        n_ctx_per_slot: int | None = None,
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
        draft_model: Any = None,
    ) -> None:
        set_verbose(verbose)
        self.reasoning_format = check_reasoning_format(reasoning_format)
        """How a thinking model's reasoning is returned: ``auto`` (as ``reasoning_content``) or ``none``."""
        self.reasoning_budget = check_budget(reasoning_budget, unlimited=-1)
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
        self.temperature = temperature
        """The temperature of requests that set none (None: 0.8 for completions, 0.2 for chat)."""
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
                    self.model,
                    n_slots=n_parallel,
                    n_ctx_per_slot=n_ctx_per_slot,
                    lora=default_lora,
                    speculative=as_speculation(draft_model),
                    **self._context_kwargs,
                )
            self._context_logs.append(context_log)
            if embedding:
                self._embedding_context()

    def completion_request(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int | None = 16,
        stop: str | Sequence[str] | None = None,
        grammar: GrammarLike = None,
        logprobs: int | None = None,
        lora: LoraSpec | None = None,
        return_progress: bool = False,
        **options: Unpack[SamplingOptions],
    ) -> GenerationRequest:
        """Build the engine request that ``create_completion`` would run (temperature: the instance's,
        else 0.8).

        ``lora={name_or_path: scale}`` runs this request under those LoRA adapters
        instead of the instance's (``{}``: the base model); a path not loaded yet is
        loaded and kept for later requests.  ``return_progress`` streams, before any text,
        a chunk with ``prompt_progress`` (``total``, ``cache``, ``processed`` tokens) when the
        request starts and after each batch of its prompt is read, as llama-server does.
        """
        sampling = self._sampling(options, 0.8, self._grammar_spec(grammar))
        prompt_tokens = self._prompt_tokens(prompt)
        return GenerationRequest(
            prompt_tokens,
            sampling,
            max_tokens,
            stop_list(stop),
            logprobs,
            lora=self._lora_set(lora),
            report_progress=return_progress,
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

        With ``suffix``, the model fills in the middle: the prompt is built from the FIM tokens
        of its vocabulary (``infill_tokens``), and the text returned goes between ``prompt``
        and ``suffix``; a model without them raises ``NotSupportedError`` (a ``ValueError``).
        ``echo`` prepends the prompt.
        Other keyword arguments are those of ``completion_request``.  Calls from
        many threads run at once, in the engine's shared batch.
        """
        n = kwargs.pop("n", 1)
        if n != 1 or n is True or choices.is_prompt_batch(prompt):
            parts = self._completion_choices(prompt, suffix, max_tokens, echo, choices.check_n(n), kwargs)
            if cancellation is not None:
                for handle in parts.streams:
                    cancellation.attach(handle)
            dicts = choices.interleave(*parts.run())
            return dicts if stream else choices.collect(dicts, parts.collect_one)
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
        n = kwargs.pop("n", 1)
        if n != 1 or n is True or choices.is_prompt_batch(prompt):
            heavy = sum(len(p) for p in prompt if isinstance(p, str)) > INLINE_CHARS
            parts = await off_loop(
                heavy, self._completion_choices, prompt, suffix, max_tokens, echo, choices.check_n(n), kwargs
            )
            dicts = choices.ainterleave(*parts.run())
            return dicts if stream else choices.collect([c async for c in dicts], parts.collect_one)
        request, shaper = await off_loop(
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
        filled = self.infill_tokens(prompt, suffix) if suffix is not None else prompt
        request = self.completion_request(filled, max_tokens=max_tokens, **kwargs)
        prefix = (
            (prompt if isinstance(prompt, str) else self.detokenize(prompt).decode("utf-8", "replace"))
            if echo
            else ""
        )
        return request, CompletionShaper(self.model_path, prefix)

    def _completion_choices(
        self,
        prompt: Any,
        suffix: str | None,
        max_tokens: int | None,
        echo: bool,
        n: int,
        kwargs: dict[str, Any],
    ) -> choices.Choices:
        """Queue ``n`` choices of each prompt (a batch is several), all checked before any is queued."""
        prompts = list(prompt) if choices.is_prompt_batch(prompt) else [prompt]
        built = [self._completion(one, suffix, max_tokens, echo, dict(kwargs)) for one in prompts]
        with_logprobs = built[0][0].logprobs is not None
        parts = choices.Choices(
            lambda items: openai_shapes.collect_completion(items, with_logprobs),
            [choices.choice_requests(request, n) for request, _shaper in built],
        )
        response_id = built[0][1].id
        for group, (_request, shaper) in enumerate(built):
            for i in range(n):
                one = CompletionShaper(self.model_path, shaper.prefix, shaper.suffix, group * n + i)
                one.id = response_id
                parts.add(one.feed, one.start())
        parts.submit(self.engine)
        return parts

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
