"""The decode loop: the thread that executes the scheduling policy against llama.cpp, step by step.

Per step one ``llama_decode`` and one native sampling call serve every sequence; the
decisions of where a request goes and what to evict or preempt are ``policy``'s.  Logits
are copied only when logprobs are asked for.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque

from llamacpp_native.binding._library import CallLog, ffi, lib, take_message
from llamacpp_native.binding.context import DECODE_ABORTED, DECODE_NO_KV_SLOT, Context
from llamacpp_native.binding.model import Model
from llamacpp_native.chat.multimodal import MediaChunk
from llamacpp_native.engine.policy import (
    Job,
    Slot,
    cells_in_use,
    eviction_candidate,
    next_media,
    place,
    position,
    preemption_victim,
)
from llamacpp_native.engine.request_stream import MAX_BACKLOG, RequestStream, wake_all
from llamacpp_native.engine.speculative import Drafter
from llamacpp_native.engine.token_probs import sample_after_sampling, sample_with_logprobs
from llamacpp_native.engine.types import TokenLogprob
from llamacpp_native.errors import ClosedError, GrammarError

PIECE_CAPACITY = 256


class Schedule:
    """What the decode thread shares with callers, guarded by ``cv``."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
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


def decode_loop(engine_ref: weakref.ref[DecodeLoop], schedule: Schedule) -> None:
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


class DecodeLoop:
    """The decode thread's side of ``Engine``: one step admits, batches, decodes and samples.

    Each step retires finished and cancelled sequences, admits waiting requests (placed by
    ``policy.place``), fills one batch with a token per generating sequence and chunks of new
    prompts, runs one ``llama_decode`` and samples every sequence in one native call.  Callers'
    requests arrive through ``_schedule``; ``Engine`` adds the callers' side.
    """

    def __init__(self, model: Model, context: Context, drafter: Drafter | None = None) -> None:
        self.model = model
        self.drafter = drafter
        """Speculative decoding's source of guesses (``speculative``); None decodes one token per step."""
        self._drafted = 0  # draft tokens verified, in how many drafts, and how many of them were accepted
        self._drafts = 0
        self._accepted = 0
        self.vocab = model.vocab
        self.context = context
        self.n_cells = context.n_ctx
        """KV cells, shared by all slots."""
        self.n_ctx = self.n_cells
        """Tokens one request's sequence may hold (``Engine`` may cap it per slot)."""
        self.n_ubatch = int(lib.llama_n_ubatch(context.handle))
        self.slots = [Slot(i) for i in range(context.n_seq_max)]
        self._media_decoded = 0
        self._prompt_decoded = 0  # prompt tokens decoded (a prefix cache hit or a fork decodes none)
        self._decode_calls = 0  # llama_decode calls of token batches, and the sequences they carried
        self._decoded_sequences = 0
        self._longest_sequence = 0  # the most tokens a sequence held before it was cut (see longest_sequence)
        self._schedule = Schedule()
        self._decoding: list[Job] = []
        self._piece_stride = PIECE_CAPACITY
        self._pieces = ffi.new("char[]", PIECE_CAPACITY * len(self.slots))
        # Buffers of the one sampling call per step, sized for every slot, allocated once.
        n_slots = len(self.slots)
        self._chains = ffi.new("struct llama_sampler *[]", n_slots)
        self._grammars = ffi.new("struct llama_sampler *[]", n_slots)
        self._tops = ffi.new("int32_t[]", n_slots)
        self._indices = ffi.new("int32_t[]", n_slots)
        self._tokens = ffi.new("llama_token[]", n_slots)
        self._eog = ffi.new("bool[]", n_slots)
        self._lengths = ffi.new("int32_t[]", n_slots)
        self._error = ffi.new("char **")
        self._verified = ffi.new("llama_token[]", (drafter.n_max if drafter else 0) + 1)
        # Raw handles for the decode thread (the context is freed only after that thread ends).
        self._ctx = context.handle
        self._batch = context.batch
        self._vocab_ptr = self.vocab.handle

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
            if job.after is not None and self._prompt_on_its_way(job.after):
                return
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
                    if job.request.report_progress:
                        stream.progress(len(slot.tokens))
                        stream.wake()

    def _prompt_on_its_way(self, leader: Job) -> bool:
        """Whether an n-choices leader's prompt is still to be decoded: its followers wait, then copy it."""
        if leader.slot is not None and leader.slot.job is leader:
            return leader.prefilling
        return leader in self._schedule.waiting  # not admitted yet (or preempted); gone: no wait

    def _place(self, job: Job) -> tuple[Slot, int] | None:
        """Carry out the policy's placement of ``job`` (``policy.place``) and make room for its prompt."""
        placement = place(self.slots, job)
        if placement is None:
            return None
        own, shared = placement.slot, placement.shared
        if placement.fresh:
            self._forget(own)
            own.lora = job.lora
            if placement.donor is not None:
                self.context.kv_copy(placement.donor.seq_id, own.seq_id, 0, position(job, shared))
                own.tokens = list(job.tokens[:shared])
        if not self._free_cells(len(job.tokens) + 1 - shared, keep=own):
            return None
        return own, shared

    def _free_cells(self, needed: int, keep: Slot | None = None) -> bool:
        """Evict idle cached slots (``policy.eviction_candidate``) until ``needed`` cells are free."""
        while self.n_cells - cells_in_use(self.slots) < needed:
            idle = eviction_candidate(self.slots, keep)
            if idle is None:
                return False
            self._forget(idle)
        return True

    def _preempt_youngest(self) -> bool:
        """Drop the KV of the job ``policy.preemption_victim`` picks, and queue it first again."""
        schedule = self._schedule
        victim = preemption_victim(schedule.running)
        if victim is None:
            return False
        assert victim.slot is not None
        with schedule.cv:
            self._forget(victim.slot)
            victim.slot.job = None
            victim.slot = None
            schedule.running.remove(victim)
            schedule.waiting.appendleft(victim)
        return True

    @property
    def longest_sequence(self) -> int:
        """The most tokens one sequence has held (measured when sequences are cut, and now)."""
        return max(self._longest_sequence, *(len(slot.tokens) for slot in self.slots))

    def _forget(self, slot: Slot) -> None:
        self._longest_sequence = max(self._longest_sequence, len(slot.tokens))
        self.context.kv_remove(slot.seq_id, -1, -1)
        slot.tokens = []

    def _truncate(self, slot: Slot, keep: int, job: Job) -> None:
        if keep < len(slot.tokens):
            self._longest_sequence = max(self._longest_sequence, len(slot.tokens))
            if not self.context.kv_remove(slot.seq_id, position(job, keep), -1):
                self._forget(slot)
                return
            del slot.tokens[keep:]

    def _fill_batch(self, jobs: list[Job]) -> list[Job]:
        """Put one token per generating job, then prompt chunks, into the batch.

        A job generates when it holds its whole sequence and a sampled token, and
        its reader keeps up.  The batch holds at most ``n_batch`` tokens and never
        more than the KV cache has room for: idle slots are evicted, then the
        youngest jobs preempted.
        """
        generating: list[Job] = []
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
        budget = min(self.context.n_batch, self.n_cells - cells_in_use(self.slots))
        chosen = generating[:budget]
        add = lib.lcpp_batch_add
        if self.drafter is not None and chosen:
            self.drafter.draft(chosen, budget - len(chosen))
        added = 0  # tokens in the batch so far: each job's next token, then its guesses
        for job in chosen:
            slot = job.slot
            assert slot is not None and job.pending is not None
            job.output, job.decodes_pending = added, True
            pos = len(slot.tokens) - job.shift
            add(batch, job.pending, pos, slot.seq_id, True)
            added += 1
            if job.draft:
                for k, token in enumerate(job.draft, 1):
                    add(batch, token, pos + k, slot.seq_id, True)
                job.in_batch = (job.pending, *job.draft)
                added += len(job.draft)
            else:
                job.in_batch = (job.pending,)
        budget -= added
        if prefilling:
            self._fill_prompts(jobs, budget, chosen)
        return chosen

    def _fill_prompts(self, jobs: list[Job], budget: int, chosen: list[Job]) -> None:
        """Add the next prompt chunk of each job still prefilling, within ``budget`` tokens."""
        batch = self._batch
        for job in jobs:
            slot = job.slot
            if budget <= 0 or slot is None or len(slot.tokens) >= len(job.tokens):
                continue
            start = len(slot.tokens)
            end = start + budget
            if job.media:  # text runs only: a media chunk is decoded on its own (_decode_media)
                end = min(end, next_media(job, start))
                if end == start:
                    continue
            part = job.tokens[start:end]
            wants_logits = start + len(part) == len(job.tokens) and job.pending is None
            tokens = ffi.new("llama_token[]", part)
            lib.lcpp_batch_add_run(batch, tokens, len(part), position(job, start), slot.seq_id, wants_logits)
            job.output = batch.n_tokens - 1 if wants_logits else -1
            job.in_batch = part
            budget -= len(part)
            self._prompt_decoded += len(part)
            chosen.append(job)

    def _decode_media(self, jobs: list[Job]) -> bool:
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

    def _decode_chunk(self, job: Job, chunk: MediaChunk) -> None:
        slot, context = job.slot, self.context
        assert slot is not None
        pos = position(job, len(slot.tokens))
        with self._schedule.cv:
            self._decoding = [job]  # a cancel from now on aborts the decode
        try:
            embeddings = chunk.multimodal.encode(chunk)
            with CallLog() as log:
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
            context.check_status(status, f"decoding the {chunk.kind}", log.errors)
        slot.tokens.extend(chunk.placeholders)
        self._media_decoded += 1

    def _decode(self, batch: list[Job]) -> None:
        """Decode the filled batch; on success every job's slot holds its new tokens."""
        context = self.context
        with self._schedule.cv:
            self._decoding = batch
        try:
            with CallLog() as log:
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
                self.context.kv_remove(job.slot.seq_id, position(job, len(job.slot.tokens)), -1)
                job.output, job.draft = -1, []
            if not self._schedule.closing:
                context.clear_abort()
            return
        if status:
            context.check_status(status, "decode", log.errors)
        self._decode_calls += 1
        self._decoded_sequences += len(batch)
        progressed: list[RequestStream] = []
        for job in batch:
            assert job.slot is not None
            job.slot.tokens.extend(job.in_batch)
            if job.decodes_pending and job.pending is not None:
                job.tokens.append(job.pending)
                job.pending = None
            elif job.request.report_progress:  # a batch of its prompt went in
                stream = job.stream()
                if stream is not None:
                    stream.progress(len(job.slot.tokens))
                    progressed.append(stream)
        if progressed:
            wake_all(progressed)

    def _evict_idle(self) -> bool:
        idle = eviction_candidate(self.slots)
        if idle is None:
            return False
        self._forget(idle)
        return True

    def _sample(self, batch: list[Job]) -> None:
        """Sample every job whose logits are ready (one native call), hand the tokens out, wake readers."""
        plain: list[Job] = []
        scored: list[Job] = []
        woken: list[RequestStream] = []
        for job in batch:
            if job.output >= 0:
                if job.draft:
                    self._verify(job, woken)
                else:
                    (plain if job.request.logprobs is None else scored).append(job)
        if plain:
            chains, grammars, tops, indices = self._chains, self._grammars, self._tops, self._indices
            tokens, eog, lengths = self._tokens, self._eog, self._lengths
            for i, job in enumerate(plain):
                chains[i], grammars[i], tops[i], indices[i] = job.chain, job.grammar, job.top, job.output
            failures = lib.lcpp_sample_many(
                self._ctx, self._vocab_ptr, len(plain), chains, grammars, tops, indices,
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
            sample = sample_after_sampling if job.request.post_sampling_probs else sample_with_logprobs
            token, logprob = sample(
                self.context, self.vocab, job.sampler, job.request.logprobs or 0, job.output
            )
            end = bool(lib.llama_vocab_is_eog(self._vocab_ptr, token))
            self._hand_out(job, token, end, self.vocab.token_to_piece(token), logprob, woken)
        wake_all(woken)

    def _verify(self, job: Job, woken: list[RequestStream]) -> None:
        """Sample a job that decoded a draft: keep the guesses its sampler agrees with, drop the rest."""
        draft, job.draft = job.draft, []
        sampled = self._verified
        count = lib.lcpp_sample_draft(
            self._ctx, self._vocab_ptr, job.chain, job.grammar, job.top, job.output,
            draft, len(draft), sampled, self._error,
        )  # fmt: skip
        if count < 0:
            self._fail([job], GrammarError(take_message(self._error) or "sampling failed"))
            return
        accepted = count - 1
        slot = job.slot
        assert slot is not None
        if accepted < len(draft):
            keep = len(slot.tokens) - (len(draft) - accepted)
            if self.context.kv_remove(slot.seq_id, position(job, keep), -1):
                del slot.tokens[keep:]
            else:  # this memory cannot drop a sequence's tail (a recurrent model): stop drafting
                self._forget(slot)
                self.drafter = None
        job.tokens.extend(draft[:accepted])
        self._drafted += len(draft)
        self._drafts += 1
        self._accepted += accepted
        stream = job.stream()
        if stream is not None:
            stream.draft_tokens += len(draft)
            stream.draft_accepted += accepted
        for i in range(count):
            token = sampled[i]
            end = bool(lib.llama_vocab_is_eog(self._vocab_ptr, token))
            self._hand_out(job, token, end, b"" if end else self.vocab.token_to_piece(token), None, woken)
            if slot.job is not job:
                return  # it ended

    def _hand_out(
        self,
        job: Job,
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

    def _retire_now(self, job: Job) -> None:
        with self._schedule.cv:
            self._retire(job)

    def _retire(self, job: Job) -> None:
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

    def _fail(self, jobs: list[Job], error: BaseException) -> None:
        """End ``jobs`` with ``error`` and forget their slots (a failed decode may half-write them)."""
        for job in jobs:
            stream = job.stream()
            if stream is not None:
                stream.finish("error", error)
            if job.slot is not None and not self.context.closed:
                self._forget(job.slot)
            self._retire_now(job)
