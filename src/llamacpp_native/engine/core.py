"""The generation engine: one decode loop per context serves every caller at once.

Every integration generates through ``Engine``.  Requests from any thread or
task join the running batch (continuous batching).  Per step the decode thread
makes one ``llama_decode`` and one native sampling call for all sequences;
text handling runs on each caller's side (``RequestStream``).
"""

from __future__ import annotations

import atexit
import dataclasses
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from llamacpp_native.binding.context import Context
from llamacpp_native.binding.lora import LoraAdapter, LoraSet, normalise_lora
from llamacpp_native.binding.model import Model
from llamacpp_native.binding.sampling import SamplerChain
from llamacpp_native.engine.loop import DecodeLoop, decode_loop
from llamacpp_native.engine.policy import MIN_COPIED_PREFIX, Job, generation_limit
from llamacpp_native.engine.request_stream import RequestStream
from llamacpp_native.engine.speculative import Speculation, make_drafter
from llamacpp_native.engine.types import Cancellation, Chunk, GenerationRequest, GenerationResult, aggregate
from llamacpp_native.errors import ClosedError, MediaTooLargeError, MultimodalError

_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_engines_at_exit() -> None:
    Model.close_those_with_lost_workers()  # first: freeing memory on a stopped RPC worker aborts
    for engine in list(_open_engines):
        engine.close()


class Engine(DecodeLoop):
    """One decode loop over one context, serving every caller at once (continuous batching).

    ``submit()`` queues a request from any thread or task and returns its
    ``RequestStream``.  The decode thread owns the context.  Each step it retires
    finished and cancelled sequences, admits waiting requests in order while a
    slot and KV space allow, runs one ``llama_decode`` that mixes one token per
    generating sequence with chunks of new prompts (within ``n_batch``), and
    samples every sequence in one native call.

    Each slot remembers the tokens of its part of the KV cache, and the LoRA
    adapters they were decoded under.  A new request continues the slot with the
    longest common prefix decoded under its own adapters, or copies that prefix
    from a busy slot (``llama_memory_seq_cp``), so a shared system prompt is
    decoded once.  Idle slots are evicted least recently used first when space
    is needed.  A request is admitted once its prompt fits; when generation
    later runs out of KV space, the most recently admitted sequence is preempted:
    its cache is dropped and it waits at the head of the queue, to be decoded
    again (prompt and output so far) and go on where it stopped.  So every
    admitted request finishes, and one that can never fit is refused at ``submit()``.

    Every sequence in one ``llama_decode`` runs under the context's one set of
    LoRA adapters.  Requests under the set now applied join the batch as usual; a
    request under another set waits at the head of the queue until the running
    requests finish, then its set is applied and it goes on.  Nothing queued
    behind it overtakes it (the queue stays first come, first served), so
    alternating sets cost batching, not correctness: no request ever runs under
    another's adapters.  ``lora`` is the set of requests that name none.

    ``speculative`` (``PromptLookupDecoding`` or ``DraftModel``) adds guessed tokens after
    each sequence's next token and keeps those its sampler agrees with: the same output,
    in fewer steps when the guesses are good (``speculative.py``).

    ``n_ctx_per_slot`` caps the tokens one request may hold (prompt and output), as
    llama-server's per-slot context does; the slots still share the one KV cache.  ``n_ctx``
    is then that cap: a longer prompt is refused and generation stops there ("length").
    None: one request may use the whole context.
    """

    def __init__(
        self,
        model: Model,
        *,
        n_slots: int = 4,
        n_ctx_per_slot: int | None = None,
        lora: Iterable[tuple[LoraAdapter, float]] = (),
        speculative: Speculation | None = None,
        **context_kwargs: Any,
    ) -> None:
        if n_ctx_per_slot is not None and (isinstance(n_ctx_per_slot, bool) or n_ctx_per_slot < 1):
            raise ValueError(
                f"n_ctx_per_slot must be a positive number of tokens or None, got {n_ctx_per_slot!r}"
            )
        self.model = model
        self.lora: LoraSet = self._checked_lora(normalise_lora(lora))
        """The adapters of a request whose ``lora`` is None."""
        # Only each sequence's last token needs logits: reserve n_slots outputs, not n_batch
        # (with a 262k vocabulary that is the difference between 2 MiB and 512 MiB).  A full
        # SWA cache keeps every cached prefix valid for reuse and copying.
        # A drafting sequence also needs logits for each of its guesses.
        drafter = None if speculative is None else make_drafter(speculative, model, n_slots, context_kwargs)
        outputs = n_slots * (1 + (drafter.n_max if drafter is not None else 0))
        try:
            context = Context(
                model, n_seq_max=n_slots, n_outputs_max=outputs, swa_full=True, **context_kwargs
            )
        except BaseException:
            if drafter is not None:
                drafter.close()
            raise
        super().__init__(model, context, drafter)
        self._n_ctx_setting = "n_ctx"  # the load setting that bounds one request, named in errors
        if n_ctx_per_slot is not None and n_ctx_per_slot < self.n_cells:
            self.n_ctx = n_ctx_per_slot
            self._n_ctx_setting = "n_ctx_per_slot"
        self._drafter = drafter  # freed at close even if the loop stopped drafting (self.drafter None)
        self._closed = False
        self._close_lock = threading.Lock()
        self.context.before_close = self._shut_down
        self._thread = threading.Thread(
            target=decode_loop, args=(weakref.ref(self), self._schedule), name="llamacpp-decode", daemon=True
        )
        weakref.finalize(self, self._schedule.close)
        _open_engines.add(self)
        self._thread.start()

    # -- the callers' side ----------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue ``request`` and return its stream; raises at once if it can never run."""
        stream, job = self._prepare(request)
        if job is not None:
            self._enqueue([job])
        return stream

    def submit_choices(self, requests: Sequence[GenerationRequest]) -> list[RequestStream]:
        """Queue n choices of one prompt (OpenAI's ``n``); their streams, in order.

        The requests differ only in sampling (their seeds, say).  All are queued at once or
        none is.  The first decodes the prompt; the others wait for that, then copy its KV
        (``llama_memory_seq_cp``) and decode only the prompt's last token, for logits of their
        own (a prompt of at most ``MIN_COPIED_PREFIX`` tokens is decoded by each).  More choices
        than the context has slots (``n_parallel``) is a ``ValueError``.
        """
        return self.submit_groups([requests])

    def submit_many(self, requests: Sequence[GenerationRequest]) -> list[RequestStream]:
        """Queue several independent requests together; their streams, in order.

        All are checked before any is queued, and nothing comes between them in the queue, so
        those that find free slots are admitted at the same step and decode in lockstep.  One by
        one, each would join the others' batches at a different point, and a batch's size can
        change a logit's last bits.  (Rows of one batch still take their own kernels and KV
        cells, so equal prompts are not promised bit-equal greedy answers.)
        """
        return self.submit_groups([[request] for request in requests])

    def submit_groups(self, groups: Sequence[Sequence[GenerationRequest]]) -> list[RequestStream]:
        """Queue several prompts' choices together (see ``submit_choices`` and ``submit_many``);
        every stream, group after group.  If one request cannot run, none is queued."""
        for group in groups:
            if len(group) > len(self.slots):
                raise ValueError(
                    f"n={len(group)} choices need as many parallel sequences, but this model has "
                    f"{len(self.slots)} (n_parallel): ask for at most {len(self.slots)}"
                )
        prepared: list[tuple[RequestStream, Job | None]] = []
        jobs: list[Job] = []
        try:
            for group in groups:
                first = len(prepared)
                for request in group:
                    prepared.append(self._prepare(request))
                choices = [job for _stream, job in prepared[first:] if job is not None]
                if choices and len(choices[0].tokens) > MIN_COPIED_PREFIX:  # a shorter prompt is not copied
                    for choice in choices[1:]:
                        choice.after = choices[0]
                jobs.extend(choices)
        except BaseException:
            for _stream, unqueued in prepared:
                if unqueued is not None:
                    unqueued.sampler.close()
            raise
        if jobs:
            self._enqueue(jobs)
        return [stream for stream, _job in prepared]

    def _prepare(self, request: GenerationRequest) -> tuple[RequestStream, Job | None]:
        """Check ``request`` and build its stream and job (None: nothing to generate)."""
        lora = self._check(request)
        limit = generation_limit(self.n_ctx, request)
        stream = RequestStream(request, limit, self._on_stream_change)
        if limit <= 0:  # the prompt fills the context: nothing can be generated
            stream.finish("length")
            return stream, None
        with self.model.gate:  # grammar and budget samplers read the vocabulary: never under close()
            sampler = SamplerChain(self.vocab, request.sampling)
            try:
                if request.grammar_prefill:
                    sampler.prefill(request.grammar_prefill)
            except BaseException:
                sampler.close()
                raise
        job = Job(request, weakref.ref(stream), sampler, limit, lora, list(request.prompt_tokens))
        job.chain, job.grammar, job.top = sampler.handle, sampler.grammar_handle, sampler.prefilter
        if request.media:
            job.media = dict(request.media)
            job.shift = sum(chunk.n_tokens - chunk.n_pos for _start, chunk in request.media)
        stream._job = job
        return stream, job

    def _enqueue(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` together (nothing comes between them) and wake the decode thread."""
        with self._schedule.cv:
            if self._closed or self._schedule.closing:
                for job in jobs:
                    job.sampler.close()
                raise ClosedError("the model is closed")
            self._schedule.waiting.extend(jobs)
            self._schedule.poked = True
            self._schedule.cv.notify()

    def stream(self, request: GenerationRequest, cancellation: Cancellation | None = None) -> Iterator[Chunk]:
        """Submit ``request`` and iterate its chunks; the last one has ``finish_reason``.

        Closing the iterator (or cancelling) frees the sequence at the next step.
        """
        handle = self.submit(request)
        if cancellation is not None:
            cancellation.attach(handle)
        return _chunks_of(handle)

    def generate(
        self, request: GenerationRequest, cancellation: Cancellation | None = None
    ) -> GenerationResult:
        """Generate for one request and return the whole result."""
        return aggregate(self.stream(request, cancellation))

    def generate_many(
        self,
        requests: Sequence[GenerationRequest],
        on_chunk: Callable[[int, Chunk], None] | None = None,
        cancellation: Cancellation | None = None,
    ) -> list[GenerationResult]:
        """Generate for several requests at once; ``on_chunk(index, chunk)`` sees text as it comes.

        All requests are checked before any is queued; they then run beside each
        other and beside every other caller's requests.
        """
        started = time.perf_counter()
        wakeup = threading.Event()
        streams = self.submit_many(requests)
        try:
            for stream in streams:
                stream.wakeup = wakeup
                if cancellation is not None:
                    cancellation.attach(stream)
            collected: list[list[Chunk]] = [[] for _ in streams]
            open_streams = set(range(len(streams)))
            while open_streams:
                wakeup.clear()
                for i in sorted(open_streams):
                    while (chunk := streams[i].poll()) is not None:
                        collected[i].append(chunk)
                        if on_chunk is not None:
                            on_chunk(i, chunk)
                    if streams[i].finished:
                        open_streams.discard(i)
                if open_streams:
                    wakeup.wait()
        finally:
            for stream in streams:
                stream.cancel()
        elapsed = time.perf_counter() - started
        return [dataclasses.replace(aggregate(iter(chunks)), seconds=elapsed) for chunks in collected]

    def stats(self) -> dict[str, int]:
        """Queue length and slot use, for monitoring; ``decode_calls`` counts the token batches decoded
        and ``decoded_sequences`` the sequences they carried (their mean: busy slots per decode),
        ``longest_sequence`` the most tokens one sequence has held, ``draft_steps`` the speculative drafts
        verified (of ``draft_tokens`` guesses)."""
        with self._schedule.cv:
            return {
                "slots": len(self.slots),
                "busy_slots": sum(1 for s in self.slots if s.job is not None),
                "queued": len(self._schedule.waiting),
                "cached_tokens": sum(len(s.tokens) for s in self.slots),
                "media_decoded": self._media_decoded,
                "prompt_tokens_decoded": self._prompt_decoded,
                "decode_calls": self._decode_calls,
                "decoded_sequences": self._decoded_sequences,
                "longest_sequence": self.longest_sequence,
                "draft_tokens": self._drafted,
                "draft_steps": self._drafts,
                "draft_tokens_accepted": self._accepted,
            }

    def slot_stats(self) -> list[dict[str, int | bool]]:
        """Per slot, for monitoring: its id, whether a request runs in it, the tokens its cache holds,
        and that request's prompt length, tokens generated and tokens still allowed (0 when idle)."""
        with self._schedule.cv:
            found: list[dict[str, int | bool]] = []
            for slot in self.slots:
                job = slot.job
                found.append(
                    {
                        "id": slot.seq_id,
                        "is_processing": job is not None,
                        "n_cached": len(slot.tokens),
                        "n_prompt": len(job.request.prompt_tokens) if job is not None else 0,
                        "n_decoded": job.generated if job is not None else 0,
                        "n_remain": job.limit - job.generated if job is not None else 0,
                    }
                )
            return found

    @property
    def idle(self) -> bool:
        """Whether no request is queued or running."""
        with self._schedule.cv:
            return not self._schedule.waiting and not self._schedule.running

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request is queued or running; False if ``timeout`` passed first."""
        schedule = self._schedule
        with schedule.cv:
            return schedule.cv.wait_for(lambda: not schedule.waiting and not schedule.running, timeout)

    def close(self) -> None:
        """Stop the decode loop (every waiting caller gets ``ClosedError``), then free the context."""
        self._shut_down()
        self.context.close()

    def _shut_down(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        schedule = self._schedule
        schedule.close()
        if not self.context.closed:
            self.context.request_abort()  # a long prefill stops early
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        with schedule.cv:
            jobs = list(schedule.waiting) + list(schedule.running)
            schedule.waiting.clear()
            schedule.running.clear()
        for job in jobs:
            stream = job.stream()
            if stream is not None:
                stream.finish("error", ClosedError("the model was closed while this generation was running"))
            job.sampler.close()
        if self._drafter is not None:
            self._drafter.close()
        _open_engines.discard(self)

    def _on_stream_change(self, stream: RequestStream) -> None:
        """A stream was cancelled, drained or dropped: unqueue it, or wake the loop."""
        job: Job | None = getattr(stream, "_job", None)
        schedule = self._schedule
        with schedule.cv:
            if job is not None and job in schedule.waiting:
                schedule.waiting.remove(job)
                job.sampler.close()
                schedule.cv.notify_all()
                return
            if job is not None and self._decoding == [job] and not stream.wanted:
                self.context.request_abort()  # the only sequence of a long decode: stop it now
            schedule.poked = True
            schedule.cv.notify()

    def _check(self, request: GenerationRequest) -> LoraSet:
        """Raise for a request that cannot run; return the adapters it runs under."""
        if request.media:
            self._check_media(request)
        else:
            request.validate(self.n_ctx, self.vocab.n_tokens, self._n_ctx_setting)
            self.vocab.check_tokens(request.prompt_tokens)
        return self.lora if request.lora is None else self._checked_lora(normalise_lora(request.lora))

    def _check_media(self, request: GenerationRequest) -> None:
        """``_check`` for a prompt with images or audio: placeholders in place, each medium fits."""
        tokens = request.prompt_tokens
        if max(start + chunk.n_tokens for start, chunk in request.media) >= len(tokens):
            raise MultimodalError("a prompt must end with text after its last image or audio clip")
        text = list(tokens)
        for start, chunk in sorted(request.media, key=lambda item: item[0], reverse=True):
            if chunk.multimodal.model is not self.model:
                raise ValueError(f"{chunk!r} was tokenized by a projector of another model")
            chunk.multimodal.handle  # noqa: B018 - raises ClosedError if the projector is closed
            if tokens[start : start + chunk.n_tokens] != list(chunk.placeholders):
                raise ValueError(f"{chunk!r} does not stand at index {start} of the prompt tokens")
            if chunk.non_causal and chunk.n_tokens > self.n_ubatch:
                raise MediaTooLargeError(
                    f"an {chunk.kind} takes {chunk.n_tokens} tokens, decoded in one micro-batch, but "
                    f"n_ubatch is {self.n_ubatch}: load the model with n_ubatch >= {chunk.n_tokens}"
                )
            del text[start : start + chunk.n_tokens]
        if len(tokens) > self.n_ctx:
            n_media = len(tokens) - len(text)
            raise MediaTooLargeError(
                f"the prompt takes {len(tokens)} tokens ({n_media} of them for images or audio) but the "
                f"context window is {self.n_ctx} tokens; send fewer or smaller media, or load the model "
                f"with a larger {self._n_ctx_setting}"
            )
        request.validate(self.n_ctx, self.vocab.n_tokens, self._n_ctx_setting)
        self.vocab.check_tokens(text)

    def _checked_lora(self, lora: LoraSet) -> LoraSet:
        for adapter, _scale in lora:
            if adapter.model is not self.model:
                raise ValueError(f"LoRA adapter {adapter.path.name} was loaded for another model")
            if adapter.closed:
                raise ClosedError(f"LoRA adapter {adapter.path.name} is closed")
        return lora


def _chunks_of(stream: RequestStream) -> Iterator[Chunk]:
    """Iterate a stream; closing (or dropping) the iterator cancels the request."""
    try:
        yield from stream
    finally:
        stream.cancel()
