"""The scheduling policy: where a request goes, what to evict, whom to preempt, as plain functions.

Plain data in, plain data out: the slots (which tokens each one's part of the KV cache holds)
and the jobs (each request's sequence so far).  Nothing here touches llama.cpp; the decode loop
(``loop.py``) carries the decisions out, and tests check them without a model.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llamacpp_native.binding.lora import LoraSet
from llamacpp_native.binding.sampling import SamplerChain
from llamacpp_native.chat.multimodal import MediaChunk
from llamacpp_native.engine.request_stream import RequestStream
from llamacpp_native.engine.types import GenerationRequest

MIN_COPIED_PREFIX = 16
"""Shortest prefix worth copying from another slot; shorter prompts are decoded afresh,
which keeps a short seeded request independent of what the cache held before."""


@dataclass
class Slot:
    """One sequence of the KV cache, and the tokens it holds (the prefix cache)."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    last_used: float = 0.0
    job: Job | None = None
    lora: LoraSet = ()  # the adapters its tokens were decoded under


@dataclass(eq=False)
class Job:
    """A submitted request as the decode loop sees it."""

    request: GenerationRequest
    stream: weakref.ref[RequestStream]
    sampler: SamplerChain
    limit: int
    lora: LoraSet
    tokens: list[int] = field(default_factory=list)  # the sequence so far: prompt, then decoded output
    slot: Slot | None = None
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
    top: int = 0  # the sampler's prefilter: how many of the highest logits it samples from (0: all)
    draft: list[int] = field(default_factory=list)  # speculative guesses put into the batch after ``pending``
    draft_state: Any = None  # the drafter's per-job state (an n-gram index)
    after: Job | None = None  # an n-choices leader whose decoded prompt this job copies (it waits for it)

    @property
    def prefilling(self) -> bool:
        """Whether part of the sequence is not yet in the KV cache."""
        return self.slot is not None and len(self.slot.tokens) < len(self.tokens)


@dataclass
class Placement:
    """Where to admit a job: ``slot``, whose first ``shared`` tokens it reuses.

    With ``fresh`` the slot's cache is dropped first (and its adapters set to the job's); then,
    with a ``donor``, the job's first ``shared`` tokens are copied from that slot's cache.
    """

    slot: Slot
    shared: int
    fresh: bool = False
    donor: Slot | None = None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable(slot: Slot, job: Job) -> int:
    """How much of ``job``'s sequence ``slot`` holds, decoded under the adapters ``job`` runs with.

    A media chunk is reused whole or not at all.
    """
    if slot.lora != job.lora:
        return 0
    shared = common_prefix(slot.tokens, job.tokens)
    for start, chunk in job.media.items():
        if start < shared < start + chunk.n_tokens:
            return start
    return shared


def position(job: Job, index: int) -> int:
    """The KV position of token ``index`` of ``job``'s sequence (M-RoPE media have fewer than tokens)."""
    if not job.shift:
        return index
    return index - sum(c.n_tokens - c.n_pos for start, c in job.media.items() if start + c.n_tokens <= index)


def next_media(job: Job, start: int) -> int:
    """Where the first media chunk at or after ``start`` begins (the end of the sequence if none)."""
    return min((s for s in job.media if s >= start), default=len(job.tokens))


def generation_limit(n_ctx: int, request: GenerationRequest) -> int:
    """How many tokens ``request`` may generate: its ``max_tokens``, within the context window."""
    room = n_ctx - len(request.prompt_tokens)
    return room if not request.max_tokens else min(request.max_tokens, room)


def place(slots: Sequence[Slot], job: Job) -> Placement | None:
    """A free slot for ``job`` holding as much of its sequence as the cache offers; None if all are busy.

    The slot that holds the most of the job's sequence is continued when the sequence continues a
    good part of it, so a short shared start (BOS alone) does not evict another conversation.
    Otherwise an empty slot (or the least recently used free one) starts afresh: from a prefix of at
    least ``MIN_COPIED_PREFIX`` tokens that another slot holds, or from nothing, so that a short
    prompt is decoded the same way whatever the cache held.
    """
    free = [s for s in slots if s.job is None]
    if not free:
        return None
    own = max(free, key=lambda s: (reusable(s, job), -s.last_used))
    shared = reusable(own, job)
    if shared >= 2 and 2 * shared >= len(own.tokens):
        return Placement(own, shared)
    empty = [s for s in free if not s.tokens]
    own = empty[0] if empty else min(free, key=lambda s: s.last_used)
    donor = max(slots, key=lambda s: 0 if s is own else reusable(s, job))  # own's cache is to be dropped
    shared = 0 if donor is own else reusable(donor, job)
    if shared < MIN_COPIED_PREFIX:
        return Placement(own, 0, fresh=True)
    return Placement(own, shared, fresh=True, donor=donor)


def cells_in_use(slots: Iterable[Slot]) -> int:
    """KV cells the slots hold (a prefix copied between slots counts twice: an upper bound)."""
    cells = 0
    for slot in slots:
        cells += len(slot.tokens)
    return cells


def eviction_candidate(slots: Iterable[Slot], keep: Slot | None = None) -> Slot | None:
    """The idle slot whose cache goes first when space is needed (least recently used, never ``keep``)."""
    idle = [s for s in slots if s.job is None and s is not keep and s.tokens]
    return min(idle, key=lambda s: s.last_used) if idle else None


def preemption_victim(running: Sequence[Job]) -> Job | None:
    """The job to preempt when generation runs out of KV space: the most recently admitted one holding
    any cache, unless it is the only one (a job alone always fits: its limit stops at the window)."""
    holders = [j for j in running if j.slot is not None and j.slot.tokens]
    return holders[-1] if len(holders) >= 2 else None
