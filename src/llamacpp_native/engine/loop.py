"""The generation engine: one decode loop per context serves every caller at once.

Every integration generates through ``Engine``.  Requests from any thread or
task join the running batch (continuous batching).  Per step the decode thread
makes one ``llama_decode`` and one native sampling call for all sequences;
text handling runs on each caller's side (``RequestStream``).  Logits are
copied only when logprobs are asked for.
"""

from __future__ import annotations

import atexit
import dataclasses
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llamacpp_native.binding._library import ffi, lib, take_message
from llamacpp_native.binding.context import DECODE_ABORTED, DECODE_NO_KV_SLOT, Context
from llamacpp_native.binding.lora import LoraAdapter, LoraSet, normalise_lora
from llamacpp_native.binding.model import Model
from llamacpp_native.binding.sampling import SamplerChain
from llamacpp_native.chat.multimodal import MediaChunk
from llamacpp_native.engine.request_stream import MAX_BACKLOG, RequestStream, wake_all
from llamacpp_native.engine.types import (
    Cancellation,
    Chunk,
    GenerationRequest,
    GenerationResult,
    TokenLogprob,
    aggregate,
)
from llamacpp_native.errors import (
    ClosedError,
    GrammarError,
    MediaTooLargeError,
    MultimodalError,
)

PIECE_CAPACITY = 256
MIN_COPIED_PREFIX = 16
"""Shortest prefix worth copying from another slot; shorter prompts are decoded afresh,
which keeps a short seeded request independent of what the cache held before."""


@dataclass
class _Slot:
    """One sequence of the KV cache, and the tokens it holds (the prefix cache)."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    last_used: float = 0.0
    job: _Job | None = None
    lora: LoraSet = ()  # the adapters its tokens were decoded under


@dataclass(eq=False)
class _Job:
    """A submitted request as the decode loop sees it."""

    request: GenerationRequest
    stream: weakref.ref[RequestStream]
    sampler: SamplerChain
    limit: int
    lora: LoraSet
    tokens: list[int] = field(default_factory=list)  # the sequence so far: prompt, then decoded output
    slot: _Slot | None = None
    pending: int | None = None  # sampled token to decode next step
    output: int = -1  # this job's logits index in the last decode, or -1
    in_batch: Sequence[int] = ()  # tokens this job put into the current batch
    decodes_pending: bool = False  # whether in_batch is the pending token
    generated: int = 0
    admitted: bool = False
    media: dict[int, MediaChunk] = field(default_factory=dict)  # by the index of its first placeholder
    shift: int = 0  # tokens minus positions of its media: nonzero only under M-RoPE
    chain: Any = None  # the sampler's raw chain and grammar pointers, for the one sampling call per step
    grammar: Any = None

    @property
    def prefilling(self) -> bool:
        """Whether part of the sequence is not yet in the KV cache."""
        return self.slot is not None and len(self.slot.tokens) < len(self.tokens)


class _Schedule:
    """What the decode thread shares with callers, guarded by ``cv``."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.waiting: deque[_Job] = deque()
        self.running: list[_Job] = []
        self.poked = False
        self.closing = False

    def poke(self) -> None:
        """Wake the decode thread for another step."""
        with self.cv:
            self.poked = True
            self.cv.notify()

    def close(self) -> None:
        """Make the decode thread leave its loop."""
        with self.cv:
            self.closing = True
            self.cv.notify()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _reusable(slot: _Slot, job: _Job) -> int:
    """How much of ``job``'s sequence ``slot`` holds, decoded under the adapters ``job`` runs with.

    A media chunk is reused whole or not at all.
    """
    if slot.lora != job.lora:
        return 0
    shared = _common_prefix(slot.tokens, job.tokens)
    for start, chunk in job.media.items():
        if start < shared < start + chunk.n_tokens:
            return start
    return shared


def _position(job: _Job, index: int) -> int:
    """The KV position of token ``index`` of ``job``'s sequence (M-RoPE media have fewer than tokens)."""
    if not job.shift:
        return index
    return index - sum(c.n_tokens - c.n_pos for start, c in job.media.items() if start + c.n_tokens <= index)


def _next_media(job: _Job, start: int) -> int:
    """Where the first media chunk at or after ``start`` begins (the end of the sequence if none)."""
    return min((s for s in job.media if s >= start), default=len(job.tokens))


def _decode_loop(engine_ref: weakref.ref[Engine], schedule: _Schedule) -> None:
    """The decode thread: step while there is work, sleep until poked, leave on close."""
    while True:
        with schedule.cv:
            while not schedule.poked and not schedule.closing:
                schedule.cv.wait()
            if schedule.closing:
                return
            schedule.poked = False
        engine = engine_ref()
        if engine is None:
            return
        if engine._step():
            schedule.poke()  # progress was made: look again at once
        del engine


_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_engines_at_exit() -> None:
    Model.close_those_with_lost_workers()  # first: freeing memory on a stopped RPC worker aborts
    for engine in list(_open_engines):
        engine.close()


class Engine:
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
    """

    def __init__(
        self,
        model: Model,
        *,
        n_slots: int = 4,
        lora: Iterable[tuple[LoraAdapter, float]] = (),
        **context_kwargs: Any,
    ) -> None:
        self.model = model
        self.vocab = model.vocab
        self.lora: LoraSet = self._checked_lora(normalise_lora(lora))
        """The adapters of a request whose ``lora`` is None."""
        # Only each sequence's last token needs logits: reserve n_slots outputs, not n_batch
        # (with a 262k vocabulary that is the difference between 2 MiB and 512 MiB).  A full
        # SWA cache keeps every cached prefix valid for reuse and copying.
        self.context = Context(
            model, n_seq_max=n_slots, n_outputs_max=n_slots, swa_full=True, **context_kwargs
        )
        self.n_ctx = self.context.n_ctx
        self.n_ubatch = int(lib.llama_n_ubatch(self.context.handle))
        self.slots = [_Slot(i) for i in range(self.context.n_seq_max)]
        self._media_decoded = 0
        self._schedule = _Schedule()
        self._decoding: list[_Job] = []
        self._closed = False
        self._close_lock = threading.Lock()
        self._piece_stride = PIECE_CAPACITY
        self._pieces = ffi.new("char[]", PIECE_CAPACITY * len(self.slots))
        # Buffers of the one sampling call per step, sized for every slot, allocated once.
        n_slots = len(self.slots)
        self._chains = ffi.new("struct llama_sampler *[]", n_slots)
        self._grammars = ffi.new("struct llama_sampler *[]", n_slots)
        self._indices = ffi.new("int32_t[]", n_slots)
        self._tokens = ffi.new("llama_token[]", n_slots)
        self._eog = ffi.new("bool[]", n_slots)
        self._lengths = ffi.new("int32_t[]", n_slots)
        self._error = ffi.new("char **")
        # Raw handles for the decode thread (the context is freed only after that thread ends).
        self._ctx = self.context.handle
        self._batch = self.context.batch
        self._vocab_ptr = self.vocab.handle
        self.context.before_close = self._shut_down
        self._thread = threading.Thread(
            target=_decode_loop, args=(weakref.ref(self), self._schedule), name="llamacpp-decode", daemon=True
        )
        weakref.finalize(self, self._schedule.close)
        _open_engines.add(self)
        self._thread.start()

    # -- the callers' side ----------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue ``request`` and return its stream; raises at once if it can never run."""
        lora = self._check(request)
        limit = self._limit(request)
        stream = RequestStream(request, limit, self._on_stream_change)
        if limit <= 0:  # the prompt fills the context: nothing can be generated
            stream.finish("length")
            return stream
        with self.model.gate:  # grammar and budget samplers read the vocabulary: never under close()
            sampler = SamplerChain(self.vocab, request.sampling)
            try:
                if request.grammar_prefill:
                    sampler.prefill(request.grammar_prefill)
            except BaseException:
                sampler.close()
                raise
        job = _Job(request, weakref.ref(stream), sampler, limit, lora, list(request.prompt_tokens))
        job.chain, job.grammar = sampler.handle, sampler.grammar_handle
        if request.media:
            job.media = dict(request.media)
            job.shift = sum(chunk.n_tokens - chunk.n_pos for _start, chunk in request.media)
        stream._job = job
        with self._schedule.cv:
            if self._closed or self._schedule.closing:
                sampler.close()
                raise ClosedError("the model is closed")
            self._schedule.waiting.append(job)
            self._schedule.poked = True
            self._schedule.cv.notify()
        return stream

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
        for request in requests:
            self._check(request)
        started = time.perf_counter()
        wakeup = threading.Event()
        streams: list[RequestStream] = []
        try:
            for request in requests:
                stream = self.submit(request)
                stream.wakeup = wakeup
                if cancellation is not None:
                    cancellation.attach(stream)
                streams.append(stream)
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
        """Queue length and slot use, for monitoring."""
        with self._schedule.cv:
            return {
                "slots": len(self.slots),
                "busy_slots": sum(1 for s in self.slots if s.job is not None),
                "queued": len(self._schedule.waiting),
                "cached_tokens": sum(len(s.tokens) for s in self.slots),
                "media_decoded": self._media_decoded,
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
        _open_engines.discard(self)

    def _on_stream_change(self, stream: RequestStream) -> None:
        """A stream was cancelled, drained or dropped: unqueue it, or wake the loop."""
        job: _Job | None = getattr(stream, "_job", None)
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
            request.validate(self.n_ctx, self.vocab.n_tokens)
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
                "with a larger n_ctx"
            )
        request.validate(self.n_ctx, self.vocab.n_tokens)
        self.vocab.check_tokens(text)

    def _checked_lora(self, lora: LoraSet) -> LoraSet:
        for adapter, _scale in lora:
            if adapter.model is not self.model:
                raise ValueError(f"LoRA adapter {adapter.path.name} was loaded for another model")
            if adapter.closed:
                raise ClosedError(f"LoRA adapter {adapter.path.name} is closed")
        return lora

    # -- the decode thread's side ----------------------------------------------------------
    def _limit(self, request: GenerationRequest) -> int:
        room = self.n_ctx - len(request.prompt_tokens)
        return room if not request.max_tokens else min(request.max_tokens, room)

    def _step(self) -> bool:
        """One step of the loop; False when nothing could be decoded."""
        schedule = self._schedule
        with schedule.cv:
            for job in list(schedule.running):
                stream = job.stream()
                if stream is None or not stream.wanted:
                    self._retire(job)
            if schedule.waiting:
                self._admit()
            jobs = list(schedule.running)
        if not jobs:
            return False
        media = False
        for job in jobs:
            if job.media:
                media = self._decode_media(jobs)
                if media:
                    jobs = [job for job in jobs if job.slot is not None]
                break
        batch = self._fill_batch(jobs)
        if not batch:
            return media
        try:
            self._decode(batch)
            self._sample(batch)
        except BaseException as error:  # never leave the loop: fail these requests instead
            self._fail(batch, error)
        return True

    def _admit(self) -> None:
        """Move waiting requests (in order) into free slots while their prompts fit.

        The head of the queue is admitted only under the adapter set now applied,
        or when nothing runs (its set is then applied before the next decode); a
        head that needs another set waits, and holds up everything behind it.
        """
        schedule = self._schedule
        while schedule.waiting:
            job = schedule.waiting[0]
            if job.lora != self.context.lora:
                if schedule.running:
                    return
                try:
                    self.context.set_lora(job.lora)
                except ClosedError as error:  # an adapter was closed after submit()
                    schedule.waiting.popleft()
                    stream = job.stream()
                    if stream is not None:
                        stream.finish("error", error)
                    job.sampler.close()
                    continue
            placed = self._place(job)
            if placed is None:
                return
            slot, shared = placed
            schedule.waiting.popleft()
            schedule.running.append(job)
            slot.job = job
            slot.last_used = time.monotonic()
            job.slot = slot
            # A fresh job re-decodes at least its last prompt token, for fresh logits; a
            # preempted one already holds its next token.
            keep = len(job.tokens) if job.pending is not None else len(job.tokens) - 1
            self._truncate(slot, min(shared, keep), job)
            if not job.admitted:
                job.admitted = True
                stream = job.stream()
                if stream is not None:
                    stream.cached_tokens = len(slot.tokens)

    def _place(self, job: _Job) -> tuple[_Slot, int] | None:
        """A free slot for ``job`` holding as much of its sequence as the cache offers, or None."""
        free = [s for s in self.slots if s.job is None]
        if not free:
            return None
        tokens = job.tokens
        own = max(free, key=lambda s: (_reusable(s, job), -s.last_used))
        shared = _reusable(own, job)
        # Continue a slot only when the prompt continues a good part of it, so a short
        # shared start (BOS alone) does not evict another conversation.
        if not (shared >= 2 and 2 * shared >= len(own.tokens)):
            # Otherwise start afresh (so a short prompt is decoded the same way whatever
            # the cache held), or from a long prefix that another slot holds.
            empty = [s for s in free if not s.tokens]
            own = empty[0] if empty else min(free, key=lambda s: s.last_used)
            self._forget(own)
            own.lora = job.lora
            donor = max(self.slots, key=lambda s: _reusable(s, job))
            shared = _reusable(donor, job)
            if shared >= MIN_COPIED_PREFIX:
                self.context.kv_copy(donor.seq_id, own.seq_id, 0, _position(job, shared))
                own.tokens = list(tokens[:shared])
            else:
                shared = 0
        if not self._free_cells(len(tokens) + 1 - shared, keep=own):
            return None
        return own, shared

    def _cells_in_use(self) -> int:
        """KV cells the slots hold (a prefix copied between slots counts twice: an upper bound)."""
        cells = 0
        for slot in self.slots:
            cells += len(slot.tokens)
        return cells

    def _free_cells(self, needed: int, keep: _Slot | None = None) -> bool:
        """Evict idle cached slots (LRU, never ``keep``) until ``needed`` cells are free."""
        while self.n_ctx - self._cells_in_use() < needed:
            idle = [s for s in self.slots if s.job is None and s is not keep and s.tokens]
            if not idle:
                return False
            self._forget(min(idle, key=lambda s: s.last_used))
        return True

    def _preempt_youngest(self) -> bool:
        """Drop the KV of the most recently admitted job holding any, and queue it first again."""
        schedule = self._schedule
        holders = [j for j in schedule.running if j.slot is not None and j.slot.tokens]
        if len(holders) < 2:
            return False  # a job alone always fits: its limit stops at the window
        victim = holders[-1]
        assert victim.slot is not None
        with schedule.cv:
            self._forget(victim.slot)
            victim.slot.job = None
            victim.slot = None
            schedule.running.remove(victim)
            schedule.waiting.appendleft(victim)
        return True

    def _forget(self, slot: _Slot) -> None:
        self.context.kv_remove(slot.seq_id, -1, -1)
        slot.tokens = []

    def _truncate(self, slot: _Slot, keep: int, job: _Job) -> None:
        if keep < len(slot.tokens):
            if not self.context.kv_remove(slot.seq_id, _position(job, keep), -1):
                self._forget(slot)
                return
            del slot.tokens[keep:]

    def _fill_batch(self, jobs: list[_Job]) -> list[_Job]:
        """Put one token per generating job, then prompt chunks, into the batch.

        A job generates when it holds its whole sequence and a sampled token, and
        its reader keeps up.  The batch holds at most ``n_batch`` tokens and never
        more than the KV cache has room for: idle slots are evicted, then the
        youngest jobs preempted.
        """
        generating: list[_Job] = []
        prefilling = False
        for job in jobs:
            job.output, job.in_batch, job.decodes_pending = -1, (), False
            slot = job.slot
            if slot is None:
                continue
            if len(slot.tokens) < len(job.tokens):
                prefilling = True
            elif job.pending is not None:
                stream = job.stream()
                if stream is not None and stream.backlog < MAX_BACKLOG:
                    generating.append(job)
        while not self._free_cells(len(generating)) and self._preempt_youngest():
            generating = [job for job in generating if job.slot is not None]
        batch = self._batch
        batch.n_tokens = 0
        budget = min(self.context.n_batch, self.n_ctx - self._cells_in_use())
        chosen = generating[:budget]
        add = lib.lcpp_batch_add
        for i, job in enumerate(chosen):
            slot = job.slot
            assert slot is not None and job.pending is not None
            job.output = i
            job.in_batch, job.decodes_pending = (job.pending,), True
            add(batch, job.pending, len(slot.tokens) - job.shift, slot.seq_id, True)
        budget -= len(chosen)
        if prefilling:
            self._fill_prompts(jobs, budget, chosen)
        return chosen

    def _fill_prompts(self, jobs: list[_Job], budget: int, chosen: list[_Job]) -> None:
        """Add the next prompt chunk of each job still prefilling, within ``budget`` tokens."""
        batch = self._batch
        for job in jobs:
            slot = job.slot
            if budget <= 0 or slot is None or len(slot.tokens) >= len(job.tokens):
                continue
            start = len(slot.tokens)
            end = start + budget
            if job.media:  # text runs only: a media chunk is decoded on its own (_decode_media)
                end = min(end, _next_media(job, start))
                if end == start:
                    continue
            part = job.tokens[start:end]
            wants_logits = start + len(part) == len(job.tokens) and job.pending is None
            tokens = ffi.new("llama_token[]", part)
            lib.lcpp_batch_add_run(batch, tokens, len(part), _position(job, start), slot.seq_id, wants_logits)
            job.output = batch.n_tokens - 1 if wants_logits else -1
            job.in_batch = part
            budget -= len(part)
            chosen.append(job)

    def _decode_media(self, jobs: list[_Job]) -> bool:
        """Decode the next media chunk of one job whose prefill has reached it; False if none could be.

        A chunk is encoded, then its embeddings decoded into the job's sequence in
        a ``llama_decode`` of their own (non-causal where the model wants it), one
        chunk per step so that generating sequences keep going in between.
        """
        for job in jobs:
            if not job.media or not job.prefilling:
                continue
            assert job.slot is not None
            chunk = job.media.get(len(job.slot.tokens))
            if chunk is None:
                continue
            while not self._free_cells(chunk.n_tokens):
                if not self._preempt_youngest():
                    return False  # wait for room
                if job.slot is None:
                    return True  # it was the youngest: it waits at the head of the queue
            try:
                self._decode_chunk(job, chunk)
            except BaseException as error:  # never leave the loop: fail this request instead
                self._fail([job], error)
            return True
        return False

    def _decode_chunk(self, job: _Job, chunk: MediaChunk) -> None:
        slot, context = job.slot, self.context
        assert slot is not None
        pos = _position(job, len(slot.tokens))
        with self._schedule.cv:
            self._decoding = [job]  # a cancel from now on aborts the decode
        try:
            embeddings = chunk.multimodal.encode(chunk)
            status = chunk.multimodal.decode(chunk, embeddings, context, pos, slot.seq_id)
            while status == DECODE_NO_KV_SLOT and self._evict_idle():
                context.kv_remove(slot.seq_id, pos, -1)
                status = chunk.multimodal.decode(chunk, embeddings, context, pos, slot.seq_id)
        finally:
            with self._schedule.cv:
                self._decoding = []
        if status != 0:
            context.kv_remove(slot.seq_id, pos, -1)  # drop the micro-batches that went in
            if status == DECODE_ABORTED:
                if not self._schedule.closing:
                    context.clear_abort()
                return
            context.check_status(status, f"decoding the {chunk.kind}")
        slot.tokens.extend(chunk.placeholders)
        self._media_decoded += 1

    def _decode(self, batch: list[_Job]) -> None:
        """Decode the filled batch; on success every job's slot holds its new tokens."""
        context = self.context
        with self._schedule.cv:
            self._decoding = batch
        try:
            status = lib.llama_decode(self._ctx, self._batch[0])
            while status == DECODE_NO_KV_SLOT and self._evict_idle():
                status = lib.llama_decode(self._ctx, self._batch[0])
        finally:
            with self._schedule.cv:
                self._decoding = []
        if status == DECODE_ABORTED:
            # Processed ubatches stay in the cache: drop them, so each slot is what it says.
            for job in batch:
                assert job.slot is not None
                self.context.kv_remove(job.slot.seq_id, _position(job, len(job.slot.tokens)), -1)
                job.output = -1
            if not self._schedule.closing:
                context.clear_abort()
            return
        if status:
            context.check_status(status, "decode")
        for job in batch:
            assert job.slot is not None
            job.slot.tokens.extend(job.in_batch)
            if job.decodes_pending and job.pending is not None:
                job.tokens.append(job.pending)
                job.pending = None

    def _evict_idle(self) -> bool:
        idle = [s for s in self.slots if s.job is None and s.tokens]
        if not idle:
            return False
        self._forget(min(idle, key=lambda s: s.last_used))
        return True

    def _sample(self, batch: list[_Job]) -> None:
        """Sample every job whose logits are ready (one native call), hand the tokens out, wake readers."""
        plain: list[_Job] = []
        scored: list[_Job] = []
        for job in batch:
            if job.output >= 0:
                (plain if job.request.logprobs is None else scored).append(job)
        woken: list[RequestStream] = []
        if plain:
            chains, grammars, indices = self._chains, self._grammars, self._indices
            tokens, eog, lengths = self._tokens, self._eog, self._lengths
            for i, job in enumerate(plain):
                chains[i], grammars[i], indices[i] = job.chain, job.grammar, job.output
            failures = lib.lcpp_sample_many(
                self._ctx, self._vocab_ptr, len(plain), chains, grammars, indices,
                tokens, eog, self._pieces, self._piece_stride, lengths, self._error,
            )  # fmt: skip
            message = take_message(self._error) if failures else None
            pieces, stride, buffer = self._pieces, self._piece_stride, ffi.buffer
            for i, job in enumerate(plain):
                token = tokens[i]
                if token < 0:
                    self._fail([job], GrammarError(message or "sampling failed"))
                    continue
                size = lengths[i]
                piece = (
                    buffer(pieces + i * stride, size)[:] if size >= 0 else self.vocab.token_to_piece(token)
                )
                self._hand_out(job, token, eog[i], piece, None, woken)
        for job in scored:
            token, logprob = self._sample_with_logprobs(job.sampler, job.request.logprobs or 0, job.output)
            end = bool(lib.llama_vocab_is_eog(self._vocab_ptr, token))
            self._hand_out(job, token, end, self.vocab.token_to_piece(token), logprob, woken)
        wake_all(woken)

    def _hand_out(
        self,
        job: _Job,
        token: int,
        end: bool,
        piece: bytes,
        logprob: TokenLogprob | None,
        woken: list[RequestStream],
    ) -> None:
        """Give a sampled token to its stream, or end the stream (end of generation, or its limit)."""
        stream = job.stream()
        if stream is None:
            return  # dropped by its reader: retired next step
        if end:
            stream.finish("stop")
            self._retire_now(job)
            return
        stream.push(token, piece, logprob)
        job.generated += 1
        if job.generated >= job.limit:
            stream.finish("length")
            self._retire_now(job)
        else:
            job.pending = token
            woken.append(stream)

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

    def _retire_now(self, job: _Job) -> None:
        with self._schedule.cv:
            self._retire(job)

    def _retire(self, job: _Job) -> None:
        """Free a job's slot (its tokens stay cached) and sampler; call with ``cv`` held."""
        if job not in self._schedule.running:
            return
        self._schedule.running.remove(job)
        if not self._schedule.running:
            self._schedule.cv.notify_all()  # wakes wait_idle()
        if job.slot is not None:
            job.slot.job = None
            job.slot.last_used = time.monotonic()
        job.sampler.close()

    def _fail(self, jobs: list[_Job], error: BaseException) -> None:
        """End ``jobs`` with ``error`` and forget their slots (a failed decode may half-write them)."""
        for job in jobs:
            stream = job.stream()
            if stream is not None:
                stream.finish("error", error)
            if job.slot is not None and not self.context.closed:
                self._forget(job.slot)
            self._retire_now(job)


def _chunks_of(stream: RequestStream) -> Iterator[Chunk]:
    """Iterate a stream; closing (or dropping) the iterator cancels the request."""
    try:
        yield from stream
    finally:
        stream.cancel()
