"""Sampler chains built natively from plain settings."""

from __future__ import annotations

import math
import random
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from llamacpp_native.binding._library import CallLog, ffi, lib, take_message
from llamacpp_native.binding.vocab import Vocab
from llamacpp_native.errors import ClosedError, GrammarError

DEFAULT_SEED = 0xFFFFFFFF


@dataclass(frozen=True)
class GrammarSpec:
    """A GBNF grammar, optionally lazy: enforced only once a trigger appears."""

    text: str
    root: str = "root"
    lazy: bool = False
    trigger_patterns: tuple[str, ...] = ()
    trigger_tokens: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReasoningBudget:
    """At most ``tokens`` of thinking between the template's ``start`` and ``end`` tags, then ``end``.

    ``generation_prompt`` is the part of the prompt the template wrote for the
    reply (it may open the thinking block itself).
    """

    start: str
    end: str
    tokens: int
    generation_prompt: str = ""


@dataclass(frozen=True)
class SamplingParams:
    """Settings of one sampler chain.  ``temperature <= 0`` means greedy.

    The chain applies, in order: logit bias, penalties, grammar, then top-k,
    typical, top-p, min-p, temperature and the seeded random draw.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int = DEFAULT_SEED
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    grammar: GrammarSpec | None = None
    reasoning: ReasoningBudget | None = None

    def validate(self, n_vocab: int) -> None:
        """Raise ``ValueError`` on settings llama.cpp would misbehave with."""
        for name in ("temperature", "repeat_penalty", "frequency_penalty", "presence_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        for name in ("top_p", "min_p", "typical_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0 (1.0 disables it), got {self.repeat_penalty}")
        if self.penalty_last_n < -1:
            raise ValueError(f"penalty_last_n must be >= -1, got {self.penalty_last_n}")
        bad = [t for t in self.logit_bias if not 0 <= int(t) < n_vocab]
        if bad:
            raise ValueError(f"logit_bias names token ids outside the vocabulary: {bad[:5]}")


_vocab_indexes: weakref.WeakKeyDictionary[Vocab, Any] = weakref.WeakKeyDictionary()
_vocab_indexes_lock = threading.Lock()


def vocab_index(vocab: Vocab) -> Any:
    """The prefix tree of ``vocab``'s token texts that grammar samplers search (built once per vocabulary)."""
    with _vocab_indexes_lock:
        index = _vocab_indexes.get(vocab)
        if index is None:
            raw = lib.lcpp_vocab_index_new(vocab.handle)
            index = ffi.gc(raw, lib.lcpp_vocab_index_free) if raw != ffi.NULL else ffi.NULL
            _vocab_indexes[vocab] = index
        return index


def _grammar_need(params: SamplingParams) -> int:
    """How many admitted tokens, best first, the chain needs to choose: 1 greedy, top_k, or 0 (all)."""
    if params.temperature <= 0:
        return 1
    return max(params.top_k, 0)


GRAMMAR_SEARCH = "indexed"
"""How grammar samplers find admitted tokens: ``"indexed"`` (the vocabulary index and
per-state caches of ``lcpp_grammar_init``), or ``"llama.cpp"`` (llama.cpp's own grammar
sampler, which checks every candidate; kept for benchmarks and comparisons).  Both
admit exactly the same tokens."""


def _llama_grammar_sampler(vocab: Vocab, grammar: GrammarSpec) -> Any:
    """llama.cpp's stock grammar sampler (see ``GRAMMAR_SEARCH``)."""
    patterns = [ffi.new("char[]", p.encode()) for p in grammar.trigger_patterns] if grammar.lazy else []
    pattern_arr = ffi.new("const char *[]", patterns) if patterns else ffi.NULL
    tokens = list(grammar.trigger_tokens) if grammar.lazy else []
    token_arr = ffi.new("llama_token[]", tokens) if tokens else ffi.NULL
    text, root = grammar.text.encode(), grammar.root.encode()
    error = ffi.new("char **")
    # llama.cpp's parser prints a syntax error to stderr: the shim's run of it reports it instead
    if lib.lcpp_grammar_check(vocab.handle, text, root, error) != 0:
        raise GrammarError(f"invalid GBNF grammar: {take_message(error) or 'llama.cpp could not parse it'}")
    with CallLog() as log:
        if grammar.lazy:
            sampler = lib.llama_sampler_init_grammar_lazy_patterns(
                vocab.handle, text, root, pattern_arr, len(patterns), token_arr, len(tokens)
            )
        else:
            sampler = lib.llama_sampler_init_grammar(vocab.handle, text, root)
    if sampler == ffi.NULL:
        raise GrammarError(f"invalid GBNF grammar: {log.reason('llama.cpp could not parse it')}")
    return sampler


def _grammar_sampler(vocab: Vocab, grammar: GrammarSpec, need: int = 0) -> Any:
    if GRAMMAR_SEARCH == "llama.cpp":
        return _llama_grammar_sampler(vocab, grammar)
    patterns = [ffi.new("char[]", p.encode()) for p in grammar.trigger_patterns] if grammar.lazy else []
    pattern_arr = ffi.new("const char *[]", patterns) if patterns else ffi.NULL
    tokens = list(grammar.trigger_tokens) if grammar.lazy else []
    token_arr = ffi.new("llama_token[]", tokens) if tokens else ffi.NULL
    error = ffi.new("char **")
    with CallLog() as log:
        sampler = lib.lcpp_grammar_init(
            vocab.handle,
            vocab_index(vocab),
            grammar.text.encode(),
            grammar.root.encode(),
            grammar.lazy,
            pattern_arr,
            len(patterns),
            token_arr,
            len(tokens),
            need,
            error,
        )
    if sampler == ffi.NULL:
        reason = take_message(error) or "llama.cpp could not parse it"
        logged = log.errors
        if logged and logged not in reason:
            reason = f"{reason}: {logged}"
        raise GrammarError(f"invalid GBNF grammar: {reason}")
    return sampler


def _reasoning_budget(vocab: Vocab, budget: ReasoningBudget) -> Any:
    """llama.cpp's reasoning-budget sampler, counting at once where the prompt opened the thinking."""
    error = ffi.new("char **")
    sampler = lib.lcpp_reasoning_budget_init(
        vocab.handle,
        budget.start.encode(),
        budget.end.encode(),
        budget.tokens,
        budget.generation_prompt.rstrip().endswith(budget.start),
        error,
    )
    if sampler == ffi.NULL:
        raise ValueError(f"cannot set a reasoning budget: {take_message(error)}")
    return sampler


def prefilter(p: SamplingParams) -> int:
    """How many of the highest raw logits the chain's choice can depend on; 0 for the whole vocabulary.

    Greedy depends on the highest, top-k on the k highest.  A stage before them that only lowers
    logits (a negative logit bias, a repeat penalty > 1, non-negative frequency and presence
    penalties) can push at most as many tokens out as it lowers, so those are added; a stage that
    may raise a logit, or force a token (the reasoning budget), needs the whole vocabulary.
    """
    top = 1 if p.temperature <= 0 else p.top_k
    if top <= 0 or p.reasoning is not None:
        return 0
    if p.logit_bias:
        if any(bias > 0 for bias in p.logit_bias.values()):
            return 0
        top += len(p.logit_bias)
    if p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
        if p.repeat_penalty < 1.0 or p.frequency_penalty < 0.0 or p.presence_penalty < 0.0:
            return 0
        if p.penalty_last_n < 0:
            return 0
        top += p.penalty_last_n
    return top


class SamplerChain:
    """A native sampler chain plus an optional grammar sampler; each freed exactly once.

    Sampling, penalties and grammar all run in C: per token, Python makes one
    call.  The grammar stays outside the chain so that it is checked against the
    chain's choice first and applied to the whole vocabulary only when it rejects
    that choice (the same shortcut llama.cpp's own sampler takes).
    """

    def __init__(self, vocab: Vocab, params: SamplingParams) -> None:
        params.validate(vocab.n_tokens)
        self.params = params
        self.seed = (
            params.seed if params.seed != DEFAULT_SEED and params.seed >= 0 else random.getrandbits(32)
        )
        self._grammar: Any = None
        if params.grammar is not None:
            self._grammar = ffi.gc(
                _grammar_sampler(vocab, params.grammar, _grammar_need(params)), lib.llama_sampler_free
            )
        chain_params = lib.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        raw = lib.llama_sampler_chain_init(chain_params)
        self._handle: Any = ffi.gc(raw, lib.llama_sampler_free)
        for stage in self._stages(vocab, params):
            lib.llama_sampler_chain_add(raw, stage)  # the chain owns the stage from here
        self._error = ffi.new("char **")
        self.prefilter = prefilter(params)
        """How many of the highest logits the chain's choice can depend on (0: all of them)."""

    def _stages(self, vocab: Vocab, p: SamplingParams) -> list[Any]:
        stages: list[Any] = []
        if p.reasoning is not None:
            stages.append(_reasoning_budget(vocab, p.reasoning))
        if p.logit_bias:
            biases = ffi.new("llama_logit_bias[]", [(int(t), float(b)) for t, b in p.logit_bias.items()])
            stages.append(lib.llama_sampler_init_logit_bias(vocab.n_tokens, len(p.logit_bias), biases))
        if p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
            stages.append(
                lib.lcpp_sampler_init_penalties(
                    vocab.n_tokens,
                    p.penalty_last_n,
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                )
            )
        if p.temperature <= 0:
            stages.append(lib.llama_sampler_init_greedy())
            return stages
        if p.top_k > 0:
            stages.append(lib.llama_sampler_init_top_k(p.top_k))
        if p.typical_p < 1.0:
            stages.append(lib.llama_sampler_init_typical(p.typical_p, 1))
        if p.top_p < 1.0:
            stages.append(lib.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            stages.append(lib.llama_sampler_init_min_p(p.min_p, 1))
        stages.append(lib.llama_sampler_init_temp(p.temperature))
        stages.append(lib.llama_sampler_init_dist(self.seed))
        return stages

    @property
    def handle(self) -> Any:
        """The raw ``llama_sampler *`` chain (without the grammar)."""
        if self._handle is None:
            raise ClosedError("sampler chain is closed")
        return self._handle

    @property
    def grammar_handle(self) -> Any:
        """The raw grammar ``llama_sampler *``, or NULL when there is no grammar."""
        self.handle  # noqa: B018 - raises if closed
        return ffi.NULL if self._grammar is None else self._grammar

    def raise_native_error(self) -> NoReturn:
        """Raise the error that the last failed native sampling call reported."""
        reason = take_message(self._error) or "unknown error"
        raise GrammarError(
            f"sampling failed in llama.cpp: {reason} (a grammar that admits no further text causes this)"
        )

    def accept(self, tokens: Sequence[int]) -> None:
        """Feed tokens that are already in the sequence (for penalties and grammar)."""
        handles = [h for h in (self.handle, self._grammar) if h is not None]
        for token in tokens:
            for handle in handles:
                if lib.lcpp_sampler_accept(handle, token, self._error) != 0:
                    self.raise_native_error()

    def prefill(self, tokens: Sequence[int]) -> None:
        """Step the grammar past tokens the prompt already holds (the template's generation prompt).

        Only the grammar sees them, as in llama.cpp: the chain's penalties and
        reasoning budget count generated tokens alone.
        """
        if self._grammar is None:
            return
        for token in tokens:
            if lib.lcpp_sampler_accept(self._grammar, token, self._error) != 0:
                self.raise_native_error()

    def reset(self) -> None:
        """Forget accepted tokens and grammar progress."""
        lib.llama_sampler_reset(self.handle)
        if self._grammar is not None:
            lib.llama_sampler_reset(self._grammar)

    def sample(self, context: Any, index: int = -1) -> int:
        """Sample (and accept) a token from ``context``'s logits at output ``index``."""
        handle, grammar = self.handle, self.grammar_handle
        token = int(lib.lcpp_sample(handle, grammar, context.handle, index, self.prefilter, self._error))
        if token < 0:
            self.raise_native_error()
        return token

    def close(self) -> None:
        """Free the chain, every stage in it, and the grammar.  Safe to call twice."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        ffi.release(handle)
        if self._grammar is not None:
            grammar, self._grammar = self._grammar, None
            ffi.release(grammar)

    def __enter__(self) -> SamplerChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
