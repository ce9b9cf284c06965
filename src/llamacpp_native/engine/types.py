"""What a request is and what it yields: the engine's request, chunk and result types, and ``Cancellation``.

Plain data, importing nothing of the engine, so the consumer side (``request_stream``) and the
decode loop both build on it.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llamacpp_native.binding.lora import LoraSet
from llamacpp_native.binding.sampling import SamplingParams
from llamacpp_native.chat.multimodal import PromptMedia
from llamacpp_native.errors import ContextOverflowError


class Cancellable(Protocol):
    """What ``Cancellation`` stops: a ``RequestStream``, or anything else with ``cancel()``."""

    def cancel(self) -> None: ...


@dataclass
class TokenLogprob:
    """Log-probability of one generated token and its most likely alternatives (most likely first).

    ``logprob`` is the chosen token's own, whether or not it is among ``top``; ``piece`` and
    ``top_pieces`` are the tokens' raw bytes (a token may hold part of a UTF-8 character, which
    ``text`` shows as U+FFFD); ``top_ids`` are the alternatives' token ids.
    """

    token: int
    text: str
    logprob: float
    top: list[tuple[str, float]]
    piece: bytes = b""
    top_pieces: list[bytes] = field(default_factory=list)
    top_ids: list[int] = field(default_factory=list)


@dataclass
class GenerationRequest:
    """What to generate: prompt tokens, sampling, limits and stop strings.

    ``max_tokens=None`` (or 0) generates until an end-of-generation token or
    the end of the context.  ``lora`` is the set of LoRA adapters (with scales)
    this request runs under: None for the engine's default set, ``()`` for the
    base model.

    ``media`` are the images (or audio clips) of a multimodal prompt, each with
    the index of its first placeholder in ``prompt_tokens`` (as
    ``MultimodalPrompt.media`` gives them); the engine encodes and decodes each
    as part of the prompt's prefill.
    """

    prompt_tokens: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = 256
    stop: Sequence[str] = ()
    logprobs: int | None = None
    grammar_prefill: list[int] = field(default_factory=list)
    """Tokens already in the prompt that the sampler's grammar must accept first."""
    lora: LoraSet | None = None
    media: PromptMedia = ()
    post_sampling_probs: bool = False
    """With ``logprobs``: log-probabilities after the sampler chain instead of the model's (llama-server's
    ``post_sampling_probs``), the top ones being the candidates the chain kept (fewer than asked once
    those sum to 1; one, of probability 1, under greedy decoding)."""
    report_progress: bool = False
    """Yield a ``Chunk`` with ``prompt_processed`` when the request is admitted and after each batch of
    its prompt is decoded (llama-server's ``return_progress``)."""

    def validate(self, n_ctx: int, n_vocab: int, n_ctx_setting: str = "n_ctx") -> None:
        """Raise a clear error for requests that cannot run (``n_ctx_setting``: the load setting that
        sets ``n_ctx``, named in the advice)."""
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0 or None (no limit), got {self.max_tokens}")
        if not self.prompt_tokens:
            raise ValueError("the prompt is empty: give at least one token (or enable BOS)")
        if len(self.prompt_tokens) > n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(self.prompt_tokens)} tokens but the context window is {n_ctx} tokens; "
                f"shorten the prompt or load the model with a larger {n_ctx_setting}"
            )
        if self.logprobs is not None and not 0 <= self.logprobs <= n_vocab:
            raise ValueError(
                f"logprobs must be between 0 and the vocabulary size {n_vocab}, got {self.logprobs}"
            )


@dataclass
class Chunk:
    """A piece of streamed output.  The last chunk carries ``finish_reason``."""

    text: str
    tokens: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens served from the prefix cache (on the last chunk)."""
    draft_tokens: int = 0
    """Speculative guesses verified for this request, and how many were right (on the last chunk)."""
    draft_accepted: int = 0
    prompt_processed: int | None = None
    """On a progress chunk (``GenerationRequest.report_progress``): the prompt tokens in the sequence so
    far, those from the prefix cache included (``cached_tokens`` says how many)."""


@dataclass
class GenerationResult:
    """A whole generation, aggregated."""

    text: str
    tokens: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    seconds: float = 0.0
    cached_tokens: int = 0
    draft_tokens: int = 0
    draft_accepted: int = 0


class Cancellation:
    """A handle to stop generations from any thread (stream close, task cancel).

    Every stream attached to it is cancelled by ``cancel()``; a stream attached
    after that is cancelled at once.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._streams: weakref.WeakSet[Cancellable] = weakref.WeakSet()

    def attach(self, stream: Cancellable) -> None:
        """Cancel ``stream`` together with this handle."""
        with self._lock:
            self._streams.add(stream)
        if self.cancelled:
            stream.cancel()

    def cancel(self) -> None:
        """Stop every attached generation as soon as possible."""
        self._event.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called."""
        return self._event.is_set()


def aggregate(chunks: Iterator[Chunk]) -> GenerationResult:
    """Collect a chunk stream into a ``GenerationResult``."""
    started = time.perf_counter()
    texts: list[str] = []
    tokens: list[int] = []
    logprobs: list[TokenLogprob] = []
    last = Chunk("", [])
    for chunk in chunks:
        texts.append(chunk.text)
        tokens.extend(chunk.tokens)
        if chunk.logprobs:
            logprobs.extend(chunk.logprobs)
        last = chunk
    return GenerationResult(
        "".join(texts),
        tokens,
        last.finish_reason or "stop",
        last.prompt_tokens,
        last.completion_tokens,
        logprobs or None,
        time.perf_counter() - started,
        last.cached_tokens,
        last.draft_tokens,
        last.draft_accepted,
    )
