"""The generation engine: prefix-cached slots, the token loop, parallel batches.

Every integration generates through ``Engine``.  Per generated token Python
makes a single native call (sample + detokenize + decode happen in C) plus the
UTF-8/stop-string bookkeeping; logits are copied only when logprobs are asked for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from llamacpp_native._library import ffi, lib
from llamacpp_native.context import DECODE_NO_KV_SLOT, Context
from llamacpp_native.errors import ClosedError, ContextOverflowError, GenerationCancelled, LlamaError
from llamacpp_native.model import Model
from llamacpp_native.sampling import SamplerChain, SamplingParams
from llamacpp_native.text_stream import StopMatcher, Utf8Stream

PIECE_CAPACITY = 256


@dataclass
class TokenLogprob:
    """Log-probability of one generated token and its most likely alternatives."""

    token: int
    text: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class GenerationRequest:
    """What to generate: prompt tokens, sampling, limits and stop strings.

    ``max_tokens=None`` (or 0) generates until an end-of-generation token or
    the end of the context.
    """

    prompt_tokens: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = 256
    stop: Sequence[str] = ()
    logprobs: int | None = None
    grammar_prefill: list[int] = field(default_factory=list)
    """Tokens already in the prompt that the sampler's grammar must accept first."""

    def validate(self, n_ctx: int, n_vocab: int) -> None:
        """Raise a clear error for requests that cannot run."""
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0 or None (no limit), got {self.max_tokens}")
        if not self.prompt_tokens:
            raise ValueError("the prompt is empty: give at least one token (or enable BOS)")
        if len(self.prompt_tokens) > n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(self.prompt_tokens)} tokens but the context window is {n_ctx} tokens; "
                "shorten the prompt or load the model with a larger n_ctx"
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


class Cancellation:
    """A handle to stop a generation from any thread (stream close, task cancel)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._context: Context | None = None

    def cancel(self) -> None:
        """Stop the generation as soon as possible, including a prompt decode in progress."""
        self._event.set()
        if self._context is not None:
            self._context.request_abort()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called."""
        return self._event.is_set()


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)
    last_used: float = 0.0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _SequenceOutput:
    """Per-sequence output bookkeeping: tokens -> safe text chunks, stop, length, logprobs.

    A token's logprob is released together with the text it starts in, so logprobs
    of tokens swallowed by a stop string are never reported.
    """

    def __init__(self, request: GenerationRequest, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.utf8 = Utf8Stream()
        self.stops = StopMatcher(request.stop)
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self._produced = 0  # characters decoded so far (emitted or held back)
        self._emitted = 0  # characters released so far
        self._pending: list[tuple[int, TokenLogprob]] = []  # (start offset, logprob)

    def feed(
        self, token: int, piece: bytes, logprob: TokenLogprob | None = None
    ) -> tuple[str, list[TokenLogprob]]:
        """Record a generated token; return the text (and logprobs) that may be emitted now."""
        self.tokens.append(token)
        decoded = self.utf8.push(piece)
        if logprob is not None:
            self._pending.append((self._produced, logprob))
        self._produced += len(decoded)
        text = self.stops.push(decoded)
        self._emitted += len(text)
        if self.stops.stopped:
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.limit:
            self.finish_reason = "length"
        return text, self._release(final=False)

    def end(self, reason: str) -> tuple[str, list[TokenLogprob]]:
        """Finish with ``reason`` (if not already finished); return held-back text and logprobs."""
        if self.finish_reason is None:
            self.finish_reason = reason
        tail = self.stops.push(self.utf8.flush()) + self.stops.flush()
        self._emitted += len(tail)
        return tail, self._release(final=True)

    def _release(self, final: bool) -> list[TokenLogprob]:
        if not self._pending:
            return []
        if final and not self.stops.stopped:
            ready = [lp for _start, lp in self._pending]
            self._pending = []
            return ready
        ready = [lp for start, lp in self._pending if start < self._emitted]
        self._pending = [] if final else [(s, lp) for s, lp in self._pending if s >= self._emitted]
        return ready


class Engine:
    """Generation over one model and one context with several prefix-cached slots.

    Requests are serialised by a lock (so one engine is safe to share between
    threads); ``generate_many`` runs several requests as parallel sequences in
    one batch.  Each slot remembers the tokens in its part of the KV cache, and a
    new request reuses the slot with the longest common prefix (LRU otherwise).
    """

    def __init__(self, model: Model, *, n_slots: int = 4, **context_kwargs: Any) -> None:
        self.model = model
        self.vocab = model.vocab
        # Only each sequence's last token needs logits: reserve n_slots outputs, not n_batch
        # (with a 262k vocabulary that is the difference between 2 MiB and 512 MiB).
        self.context = Context(model, n_seq_max=n_slots, n_outputs_max=n_slots, **context_kwargs)
        self.n_ctx = self.context.n_ctx
        self.slots = [_Slot(i) for i in range(self.context.n_seq_max)]
        self.lock = threading.Lock()
        self._owner: int | None = None  # thread holding the engine, to refuse same-thread re-entry
        self._piece = ffi.new("char[]", PIECE_CAPACITY)
        self._piece_len = ffi.new("int32_t *")
        self._status = ffi.new("int32_t *")
        self._eog = ffi.new("bool *")

    def close(self) -> None:
        """Free the context (the model is left to its owner)."""
        self.context.close()

    # -- slots & prefill --------------------------------------------------------------
    def _choose_slot(self, prompt: Sequence[int], exclude: set[int]) -> tuple[_Slot, int]:
        candidates = [s for s in self.slots if s.seq_id not in exclude]
        best = max(candidates, key=lambda s: (_common_prefix(s.tokens, prompt), -s.last_used))
        shared = _common_prefix(best.tokens, prompt)
        # Reuse a slot only when the prompt continues a good part of what it holds: a
        # short shared start (BOS alone) must not evict another conversation.
        if shared >= 2 and 2 * shared >= len(best.tokens):
            return best, shared
        # Otherwise start afresh, so the prompt is decoded the same way whatever the cache held.
        empty = [s for s in candidates if not s.tokens]
        return (empty[0] if empty else min(candidates, key=lambda s: s.last_used)), 0

    @contextmanager
    def _exclusive(self, cancellation: Cancellation | None) -> Iterator[Context]:
        """Hold the engine for one request (across a stream's pauses)."""
        if self._owner == threading.get_ident():
            raise LlamaError(
                "a stream from this model is still open in this thread; read it to the end "
                "or close() it before starting another request"
            )
        with self.lock:
            self._owner = threading.get_ident()
            context = self.context
            context.clear_abort()
            if cancellation is not None:
                cancellation._context = context
            try:
                yield context
            finally:
                self._owner = None
                if cancellation is not None:
                    cancellation._context = None
                if not context.closed:
                    context.clear_abort()

    def _check_usable(self, cancellation: Cancellation | None) -> None:
        if self.context.closed:
            raise ClosedError("the model was closed while this generation was running")
        if cancellation is not None and cancellation.cancelled:
            raise GenerationCancelled("generation was cancelled")

    def _forget(self, slot: _Slot) -> None:
        self.context.kv_remove(slot.seq_id, -1, -1)
        slot.tokens = []

    def _evict_for(self, slot: _Slot) -> bool:
        """Free KV space by forgetting the least recently used other slot."""
        others = [s for s in self.slots if s is not slot and s.tokens]
        if not others:
            return False
        self._forget(min(others, key=lambda s: s.last_used))
        return True

    def _truncate(self, slot: _Slot, keep: int) -> None:
        if keep < len(slot.tokens):
            if not self.context.kv_remove(slot.seq_id, keep, -1):
                self._forget(slot)
                return
            del slot.tokens[keep:]

    def _decode_checked(self, slot: _Slot, tokens: Sequence[int]) -> int:
        """Decode tokens at the end of ``slot``; evict other slots when the cache is full."""
        context = self.context
        arr = ffi.new("llama_token[]", list(tokens))
        while True:
            status = lib.lcpp_decode_sequence(
                context.handle,
                context.batch,
                context.n_batch,
                arr,
                len(tokens),
                len(slot.tokens),
                slot.seq_id,
            )
            if status != DECODE_NO_KV_SLOT or not self._evict_for(slot):
                return int(status)

    def _prefill(self, slot: _Slot, prompt: Sequence[int], shared: int) -> None:
        # Re-decode at least the last prompt token so fresh logits exist.
        self._truncate(slot, min(shared, len(prompt) - 1))
        start = len(slot.tokens)
        for begin in range(start, len(prompt), self.context.n_batch):
            chunk = prompt[begin : begin + self.context.n_batch]
            self.context.check_status(self._decode_checked(slot, chunk), "prompt decode")
            slot.tokens.extend(chunk)

    def _limit(self, request: GenerationRequest) -> int:
        room = self.n_ctx - len(request.prompt_tokens)
        return room if not request.max_tokens else min(request.max_tokens, room)

    def _sampler(self, request: GenerationRequest) -> SamplerChain:
        sampler = SamplerChain(self.vocab, request.sampling)
        if request.grammar_prefill:
            sampler.accept(request.grammar_prefill)
        return sampler

    # -- single sequence ------------------------------------------------------------------
    def stream(self, request: GenerationRequest, cancellation: Cancellation | None = None) -> Iterator[Chunk]:
        """Generate for one request, yielding text chunks; the last one has ``finish_reason``.

        Closing the iterator (or cancelling) stops decoding and leaves the engine usable.
        """
        request.validate(self.n_ctx, self.vocab.n_tokens)
        self.vocab.check_tokens(request.prompt_tokens)
        sampler = self._sampler(request)
        with self._exclusive(cancellation):
            slot, shared = self._choose_slot(request.prompt_tokens, set())
            slot.last_used = time.monotonic()
            try:
                self._prefill(slot, request.prompt_tokens, shared)
                yield from self._generate_one(slot, request, sampler, cancellation)
            except GeneratorExit:  # the consumer stopped reading: the cache is still consistent
                raise
            except BaseException:  # an interrupted decode may leave the slot half-written
                if not self.context.closed:
                    self._forget(slot)
                raise
            finally:
                sampler.close()

    def _generate_one(
        self,
        slot: _Slot,
        request: GenerationRequest,
        sampler: SamplerChain,
        cancellation: Cancellation | None,
    ) -> Iterator[Chunk]:
        out = _SequenceOutput(request, self._limit(request))
        n_prompt = len(request.prompt_tokens)
        if out.limit <= 0:
            yield Chunk("", [], None, "length", n_prompt, 0)
            return
        handle, vocab = self.context.handle, self.vocab.handle
        chain, grammar, error = sampler.handle, sampler.grammar_handle, sampler._error
        batch, piece, piece_len, status = self.context.batch, self._piece, self._piece_len, self._status
        eog = self._eog
        step, is_eog, seq_id = lib.lcpp_step, lib.llama_vocab_is_eog, slot.seq_id
        want_logprobs = request.logprobs is not None
        while out.finish_reason is None:
            self._check_usable(cancellation)
            pos = len(slot.tokens)
            decode = len(out.tokens) + 1 < out.limit
            logprob: TokenLogprob | None = None
            if want_logprobs:
                token, logprob = self._sample_with_logprobs(sampler, request.logprobs or 0, -1)
                piece_bytes = self.vocab.token_to_piece(token)
                if is_eog(vocab, token):
                    break
                if decode:
                    self.context.check_status(self._decode_checked(slot, (token,)))
            else:
                token = step(handle, chain, grammar, vocab, batch, -1, pos, seq_id, decode, False,
                             piece, PIECE_CAPACITY, piece_len, eog, status, error)  # fmt: skip
                if token < 0:
                    sampler.raise_native_error()
                if eog[0]:
                    break
                if status[0] == DECODE_NO_KV_SLOT and self._evict_for(slot):
                    status[0] = self._decode_checked(slot, (token,))
                if status[0] != 0:
                    self.context.check_status(status[0], "token decode")
                n = piece_len[0]
                piece_bytes = ffi.buffer(piece, n)[:] if n >= 0 else self.vocab.token_to_piece(token)
            if decode:
                slot.tokens.append(token)
            text, logprobs = out.feed(token, piece_bytes, logprob)
            if text or logprobs:
                yield Chunk(text, [token], logprobs or None)
        tail, logprobs = out.end("stop")
        yield Chunk(tail, [], logprobs or None, out.finish_reason, n_prompt, len(out.tokens))

    def _sample_with_logprobs(
        self, sampler: SamplerChain, top_n: int, index: int
    ) -> tuple[int, TokenLogprob]:
        handle, n_vocab = self.context.handle, self.vocab.n_tokens
        ids = ffi.new("llama_token[]", max(top_n, 1))
        values = ffi.new("float[]", max(top_n, 1))
        lib.lcpp_logprobs(handle, index, n_vocab, -1, top_n, ids, values)  # read before sampling
        token = sampler.sample(self.context, index)
        own = lib.lcpp_logprobs(handle, index, n_vocab, token, 0, ffi.NULL, ffi.NULL)
        top = [
            (self.vocab.token_to_piece(ids[i]).decode("utf-8", "replace"), float(values[i]))
            for i in range(top_n)
        ]
        text = self.vocab.token_to_piece(token).decode("utf-8", "replace")
        return token, TokenLogprob(token, text, float(own), top)

    def generate(
        self, request: GenerationRequest, cancellation: Cancellation | None = None
    ) -> GenerationResult:
        """Generate for one request and return the whole result."""
        return aggregate(self.stream(request, cancellation))

    # -- many sequences in one batch ---------------------------------------------------
    def generate_many(
        self,
        requests: Sequence[GenerationRequest],
        on_chunk: Callable[[int, Chunk], None] | None = None,
        cancellation: Cancellation | None = None,
    ) -> list[GenerationResult]:
        """Generate for several requests as parallel sequences sharing each decode.

        Requests beyond the number of slots run in further rounds.  ``on_chunk``
        receives ``(request_index, chunk)`` as text is produced.
        """
        for request in requests:
            request.validate(self.n_ctx, self.vocab.n_tokens)
            self.vocab.check_tokens(request.prompt_tokens)
        results: list[GenerationResult] = []
        width = len(self.slots)
        for start in range(0, len(requests), width):
            group = list(requests[start : start + width])

            def forward(i: int, chunk: Chunk, offset: int = start) -> None:
                if on_chunk is not None:
                    on_chunk(offset + i, chunk)

            results.extend(self._generate_group(group, forward, cancellation))
        return results

    def _generate_group(
        self,
        requests: list[GenerationRequest],
        on_chunk: Callable[[int, Chunk], None],
        cancellation: Cancellation | None,
    ) -> list[GenerationResult]:
        samplers = [self._sampler(r) for r in requests]
        started = time.perf_counter()
        with self._exclusive(cancellation):
            chosen: list[_Slot] = []
            try:
                for request in requests:
                    slot, shared = self._choose_slot(request.prompt_tokens, {s.seq_id for s in chosen})
                    slot.last_used = time.monotonic()
                    self._truncate(slot, min(shared, len(request.prompt_tokens) - 1))
                    chosen.append(slot)
                outputs = self._run_group(requests, samplers, chosen, on_chunk, cancellation)
            except BaseException:
                if not self.context.closed:
                    for slot in chosen:
                        self._forget(slot)
                raise
            finally:
                for sampler in samplers:
                    sampler.close()
        elapsed = time.perf_counter() - started
        return [
            GenerationResult(
                text,
                out.tokens,
                out.finish_reason or "stop",
                len(r.prompt_tokens),
                len(out.tokens),
                logprobs or None,
                elapsed,
            )
            for r, out, text, logprobs in outputs
        ]

    def _run_group(
        self,
        requests: list[GenerationRequest],
        samplers: list[SamplerChain],
        slots: list[_Slot],
        on_chunk: Callable[[int, Chunk], None],
        cancellation: Cancellation | None,
    ) -> list[tuple[GenerationRequest, _SequenceOutput, str, list[TokenLogprob]]]:
        context = self.context
        # Prompt bodies first, then every prompt's last token in one final batch, so
        # that all sequences have their logits in the same (last) batch.
        bodies = [
            (r.prompt_tokens[len(s.tokens) : -1], len(s.tokens), s.seq_id)
            for r, s in zip(requests, slots, strict=True)
        ]
        self._decode_group([b for b in bodies if b[0]], slots)
        lasts = [
            (r.prompt_tokens[-1:], len(r.prompt_tokens) - 1, s.seq_id)
            for r, s in zip(requests, slots, strict=True)
        ]
        indices = self._decode_group(lasts, slots)
        for request, slot in zip(requests, slots, strict=True):
            slot.tokens = list(request.prompt_tokens)
        outputs = [_SequenceOutput(r, self._limit(r)) for r in requests]
        texts = [""] * len(requests)
        logprobs: list[list[TokenLogprob]] = [[] for _ in requests]
        active = [i for i, out in enumerate(outputs) if out.limit > 0]
        for out in outputs:
            if out.limit <= 0:
                out.finish_reason = "length"
        vocab, batch = self.vocab.handle, context.batch
        while active:
            self._check_usable(cancellation)
            batch.n_tokens = 0
            still: list[int] = []
            for i in active:
                out, request = outputs[i], requests[i]
                if request.logprobs is not None:
                    token, logprob = self._sample_with_logprobs(samplers[i], request.logprobs, indices[i])
                else:
                    token, logprob = samplers[i].sample(context, indices[i]), None
                if lib.llama_vocab_is_eog(vocab, token):
                    out.finish_reason = "stop"
                else:
                    text, released = out.feed(token, self.vocab.token_to_piece(token), logprob)
                    logprobs[i].extend(released)
                    if text or released:
                        texts[i] += text
                        on_chunk(i, Chunk(text, [token], released or None))
                    if out.finish_reason is None:
                        indices[i] = batch.n_tokens
                        lib.lcpp_batch_add(batch, token, len(slots[i].tokens), slots[i].seq_id, True)
                        slots[i].tokens.append(token)
                        still.append(i)
                if out.finish_reason is not None:
                    tail, released = out.end("stop")
                    texts[i] += tail
                    logprobs[i].extend(released)
                    chunk = Chunk(
                        tail,
                        [],
                        released or None,
                        out.finish_reason,
                        len(request.prompt_tokens),
                        len(out.tokens),
                    )
                    on_chunk(i, chunk)
            active = still
            if active:
                context.check_status(lib.llama_decode(context.handle, batch[0]), "parallel decode")
        return list(zip(requests, outputs, texts, logprobs, strict=True))

    def _decode_group(self, sequences: list[tuple[list[int], int, int]], slots: list[_Slot]) -> list[int]:
        """``decode_many``, forgetting slots outside the group while the KV cache is full."""
        while True:
            try:
                return self.context.decode_many(sequences)
            except ContextOverflowError:
                idle = [s for s in self.slots if s not in slots and s.tokens]
                if not idle:
                    raise
                self._forget(min(idle, key=lambda s: s.last_used))


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
    )
