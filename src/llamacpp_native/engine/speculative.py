"""Speculative decoding: cheap guesses of the next tokens, verified by the model in one decode.

Each step the decode loop asks a drafter for up to ``num_pred_tokens`` guesses per generating
sequence and puts them into the batch after the sequence's next token, each with logits.  The
sequence's own sampler then samples position after position and keeps the guesses while they
match what it samples (``lcpp_sample_draft``): the output is exactly that of decoding one token
at a time, greedy or sampled with a seed, because every token is still drawn from the model's
own distribution.  Rejected guesses leave the KV cache again.

Two drafters: ``PromptLookupDecoding`` finds the sequence's last n-gram earlier in the sequence
(the prompt and the output so far) and proposes what followed it there, which pays off when the
reply repeats its input (code edits, extraction, quoting); ``DraftModel`` runs a small model with
the same vocabulary greedily ahead of the large one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llamacpp_native.binding._library import ffi, lib, take_message
from llamacpp_native.binding.context import Context
from llamacpp_native.binding.model import Model
from llamacpp_native.binding.vocab import Vocab
from llamacpp_native.engine.policy import Job, common_prefix
from llamacpp_native.errors import GrammarError


@dataclass(frozen=True)
class PromptLookupDecoding:
    """Draft by n-gram lookup in the sequence itself, with no draft model (llama-cpp-python's name).

    The longest of the sequence's last ``max_ngram_size`` .. ``min_ngram_size`` tokens that
    occurred before proposes the ``num_pred_tokens`` tokens that followed it there.
    """

    max_ngram_size: int = 3
    num_pred_tokens: int = 10
    min_ngram_size: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram_size <= self.max_ngram_size:
            raise ValueError(
                f"n-gram sizes must satisfy 1 <= min_ngram_size <= max_ngram_size, got "
                f"{self.min_ngram_size} and {self.max_ngram_size}"
            )
        _check_pred_tokens(self.num_pred_tokens)


@dataclass(frozen=True)
class DraftModel:
    """Draft with a smaller GGUF model that shares the target model's vocabulary.

    It decodes greedily ``num_pred_tokens`` ahead of the target in a context of its own with
    the same window and parallel sequences.
    """

    path: str | os.PathLike[str]
    num_pred_tokens: int = 8
    n_gpu_layers: int = 0

    def __post_init__(self) -> None:
        _check_pred_tokens(self.num_pred_tokens)


Speculation = PromptLookupDecoding | DraftModel


def _check_pred_tokens(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
        raise ValueError(f"num_pred_tokens must be an integer from 1 to 64, got {n!r}")


def as_speculation(value: Any) -> Speculation | None:
    """``draft_model=`` as ``Llama`` takes it: None, a spec, or a path to a draft GGUF."""
    if value is None or isinstance(value, (PromptLookupDecoding, DraftModel)):
        return value
    if isinstance(value, (str, os.PathLike)):
        return DraftModel(value)
    raise TypeError(
        "draft_model must be a path to a draft GGUF, DraftModel(...) or PromptLookupDecoding(...), "
        f"not {type(value).__name__}"
    )


class NgramIndex:
    """Where each n-gram of one sequence last occurred, extended as the sequence grows."""

    __slots__ = ("sizes", "tables", "indexed")

    def __init__(self, spec: PromptLookupDecoding) -> None:
        self.sizes = range(spec.max_ngram_size, spec.min_ngram_size - 1, -1)
        self.tables: list[dict[tuple[int, ...], int]] = [{} for _ in self.sizes]
        self.indexed = 0  # tokens[:indexed] have their n-grams in the tables

    def draft(self, tokens: list[int], last: int, n_max: int) -> list[int]:
        """Up to ``n_max`` tokens that followed the last earlier occurrence of ``tokens + [last]``'s tail."""
        end = len(tokens)
        for n, table in zip(self.sizes, self.tables, strict=True):
            for i in range(max(self.indexed, n), end):
                table[tuple(tokens[i - n : i])] = i  # the n-gram ending before i was followed by tokens[i]
        self.indexed = end
        for n, table in zip(self.sizes, self.tables, strict=True):
            if end < n - 1:
                continue
            start = table.get((*tokens[end - n + 1 :], last))
            if start is not None:
                return tokens[start : start + n_max]
        return []


class Drafter:
    """What the decode loop asks each step: drafts for the generating jobs, within a token budget."""

    n_max: int

    def draft(self, jobs: Sequence[Job], room: int) -> None:
        """Set ``job.draft`` for each of ``jobs``, in all at most ``room`` tokens."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what the drafter holds."""


def draft_limit(job: Job, n_max: int) -> int:
    """How many draft tokens ``job`` may take: never past its own limit, and none with logprobs or media."""
    if job.request.logprobs is not None or job.media:
        return 0
    return max(0, min(n_max, job.limit - job.generated - 1))


class LookupDrafter(Drafter):
    """``PromptLookupDecoding``'s drafter: an ``NgramIndex`` per job."""

    def __init__(self, spec: PromptLookupDecoding) -> None:
        self.spec = spec
        self.n_max = spec.num_pred_tokens

    def draft(self, jobs: Sequence[Job], room: int) -> None:
        """Look each job's tail up in its own sequence."""
        for job in jobs:
            limit = min(draft_limit(job, self.n_max), room)
            if limit <= 0 or job.pending is None:
                continue
            index = job.draft_state
            if index is None:
                index = job.draft_state = NgramIndex(self.spec)
            job.draft = index.draft(job.tokens, job.pending, limit)
            room -= len(job.draft)


class ModelDrafter(Drafter):
    """``DraftModel``'s drafter: the draft model's own context mirrors each slot's sequence.

    Each step it catches every drafting sequence up with the tokens the target accepted
    (dropping what it guessed wrong), then decodes ``num_pred_tokens`` greedy steps for all
    of them together, one batch per step.
    """

    def __init__(self, spec: DraftModel, target: Model, n_slots: int, context_kwargs: dict[str, Any]) -> None:
        self.n_max = spec.num_pred_tokens
        self.model = Model(spec.path, n_gpu_layers=spec.n_gpu_layers)
        try:
            check_same_vocab(target.vocab, self.model.vocab)
            kwargs = {k: v for k, v in context_kwargs.items() if k in _DRAFT_CONTEXT_KEYS}
            self.context = Context(
                self.model, n_seq_max=n_slots, n_outputs_max=n_slots, swa_full=True, **kwargs
            )
        except BaseException:
            self.model.close()
            raise
        self.held: list[list[int]] = [[] for _ in range(n_slots)]  # what each draft sequence's KV holds
        self._greedy = lib.llama_sampler_init_greedy()
        self._error = ffi.new("char **")

    def draft(self, jobs: Sequence[Job], room: int) -> None:
        """Catch each job's draft sequence up, then guess ahead greedily for all at once."""
        active: list[tuple[Job, int]] = []
        for job in jobs:
            limit = min(draft_limit(job, self.n_max), room)
            if limit <= 0 or job.pending is None or job.slot is None:
                continue
            active.append((job, limit))
            room -= limit
        if not active:
            return
        ctx, batch = self.context.handle, self.context.batch
        jobs_drafting = [job for job, _limit in active]
        outputs = dict(zip(jobs_drafting, self._catch_up(jobs_drafting), strict=True))
        while outputs:
            batch.n_tokens = 0
            going: dict[Job, int] = {}
            for job, limit in active:
                index = outputs.get(job)
                if index is None:
                    continue
                token = self._sample(ctx, index)
                job.draft.append(token)
                if len(job.draft) < limit and not self.model.vocab.is_eog(token):
                    seq = job.slot.seq_id  # type: ignore[union-attr]
                    self.held[seq].append(token)
                    lib.lcpp_batch_add(batch, token, len(self.held[seq]) - 1, seq, True)
                    going[job] = batch.n_tokens - 1
            if going:
                self.context.check_status(lib.llama_decode(ctx, batch[0]), "decoding the draft model")
            outputs = going

    def _catch_up(self, jobs: list[Job]) -> list[int]:
        """Decode what each job's draft sequence lacks; each one's logits index in the last batch."""
        ctx, batch, n_batch = self.context.handle, self.context.batch, self.context.n_batch
        batch.n_tokens = 0
        outputs: list[int] = []
        for job in jobs:
            seq = job.slot.seq_id  # type: ignore[union-attr]
            assert job.pending is not None
            target = [*job.tokens, job.pending]
            held = self.held[seq]
            keep = min(common_prefix(held, target), len(target) - 1)
            if keep < len(held):
                if not lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), seq, keep, -1):
                    lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), seq, -1, -1)
                    keep = 0
                del held[keep:]
            missing = target[keep:]
            if batch.n_tokens + len(missing) > n_batch:
                self._flush()
                if len(missing) > n_batch:  # a long prompt: all but its last token on its own
                    head = ffi.new("llama_token[]", missing[:-1])
                    status = lib.lcpp_decode_sequence(ctx, batch, n_batch, head, len(missing) - 1, keep, seq)
                    self.context.check_status(status, "decoding the draft model's prompt")
                    held.extend(missing[:-1])
                    keep, missing = len(held), missing[-1:]
                    batch.n_tokens = 0
            run = ffi.new("llama_token[]", missing)
            lib.lcpp_batch_add_run(batch, run, len(missing), keep, seq, True)
            held.extend(missing)
            outputs.append(batch.n_tokens - 1)
        self._flush()
        return outputs

    def _flush(self) -> None:
        batch = self.context.batch
        if batch.n_tokens:
            status = lib.llama_decode(self.context.handle, batch[0])
            self.context.check_status(status, "decoding the draft model")

    def _sample(self, ctx: Any, index: int) -> int:
        token = int(lib.lcpp_sample(self._greedy, ffi.NULL, ctx, index, 1, self._error))
        if token < 0:
            raise GrammarError(take_message(self._error) or "the draft model's sampling failed")
        return token

    def close(self) -> None:
        """Free the draft context and model."""
        if self._greedy is not None:
            lib.llama_sampler_free(self._greedy)
            self._greedy = None
        self.context.close()
        self.model.close()


_DRAFT_CONTEXT_KEYS = ("n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch", "flash_attn")


def check_same_vocab(target: Vocab, draft: Vocab) -> None:
    """Raise ``ValueError`` unless a draft model's tokens mean what the target's do."""
    if target.n_tokens != draft.n_tokens:
        raise ValueError(
            f"the draft model's vocabulary has {draft.n_tokens} tokens and the model's {target.n_tokens}: "
            "a draft model must share the model's tokenizer"
        )
    step = max(1, target.n_tokens // 256)
    for token in range(0, target.n_tokens, step):
        if target.token_to_piece(token) != draft.token_to_piece(token):
            raise ValueError(
                f"token {token} is {target.token_to_piece(token)!r} for the model but "
                f"{draft.token_to_piece(token)!r} for the draft model: they need the same tokenizer"
            )


def make_drafter(spec: Speculation, target: Model, n_slots: int, context_kwargs: dict[str, Any]) -> Drafter:
    """The drafter for ``spec``."""
    if isinstance(spec, PromptLookupDecoding):
        return LookupDrafter(spec)
    return ModelDrafter(spec, target, n_slots, context_kwargs)
