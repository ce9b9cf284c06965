"""The base of ``Llama``: the model and engine it holds, LoRA adapters by name, tokens, sampling options."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias, TypedDict, TypeVar

from typing_extensions import Self

from llamacpp_native.binding.context import Context
from llamacpp_native.binding.lora import LoraAdapter, LoraSet, normalise_lora
from llamacpp_native.binding.model import Model
from llamacpp_native.binding.offload import OffloadReport
from llamacpp_native.binding.sampling import GrammarSpec, SamplingParams
from llamacpp_native.chat.media import MediaPolicy
from llamacpp_native.chat.multimodal import Multimodal
from llamacpp_native.chat.templates import ChatTemplates
from llamacpp_native.engine.core import Engine
from llamacpp_native.errors import LoraError
from llamacpp_native.grammar.gbnf import LlamaGrammar

GrammarLike: TypeAlias = LlamaGrammar | str | None


LoraSpec: TypeAlias = Mapping[str | os.PathLike[str] | LoraAdapter, float]
"""Per-request LoRA adapters: ``{name, path or LoraAdapter: scale}``; ``{}`` is the base model."""


class SamplingOptions(TypedDict, total=False):
    """Sampling keyword arguments of completions and chat, with llama-cpp-python's names.

    Defaults: top_k 40, top_p 0.95, min_p 0.05, typical_p 1.0, no penalties,
    the instance's seed, no logit bias; the instance's temperature, else 0.8 (completions) or 0.2 (chat).
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


INLINE_CHARS = 2000
"""Prompts up to this many characters are tokenized (and short plain chats rendered) on the event
loop itself: well under a millisecond, less than the hop to a worker thread costs under load."""

T = TypeVar("T")


async def off_loop(heavy: bool, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` in a worker thread when ``heavy``, else right here (it is too short to matter)."""
    return await asyncio.to_thread(work, *args) if heavy else work(*args)


def check_budget(budget: int | None, unlimited: int | None = None) -> int | None:
    """A reasoning budget in tokens (None, or ``unlimited`` where allowed: no limit), or a ``ValueError``."""
    if budget is None or (unlimited is not None and budget == unlimited):
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        allowed = " (or -1 for no limit)" if unlimited is not None else " (or None for no limit)"
        raise ValueError(f"reasoning_budget must be a number of tokens >= 0{allowed}, got {budget!r}")
    return budget


def stop_list(stop: str | Sequence[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


class LlamaBase:
    """What every part of ``Llama`` builds on: the loaded model, its engine, LoRA names, tokens, sampling.

    ``Llama.__init__`` sets these attributes; ``LlamaChat`` and ``LlamaEmbeddings`` add chat and
    embeddings on top, and ``Llama`` completions.
    """

    model: Model
    model_path: str
    seed: int
    temperature: float | None
    last_n_tokens_size: int
    chat_format: str | None
    chat_template: str | None
    reasoning_format: str
    reasoning_budget: int | None
    media_policy: MediaPolicy
    multimodal: Multimodal | None
    _engine: Engine | None
    _embedder: Context | None
    _embed_lock: threading.Lock
    _templates: ChatTemplates | None
    _lora_lock: threading.Lock
    _loras_by_path: dict[str, LoraAdapter]
    _lora_names: dict[str, LoraAdapter]
    _context_kwargs: dict[str, Any]
    _context_logs: list[list[str]]
    _pooling: str | None
    _n_parallel: int

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

    def __enter__(self) -> Self:
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
        if self.temperature is not None:
            temperature = self.temperature
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
