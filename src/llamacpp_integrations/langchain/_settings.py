"""Settings shared by the LangChain classes, and the lazy, shared model behind them.

The field names and meanings are those of langchain-community's ``LlamaCpp``,
``ChatLlamaCpp`` and ``LlamaCppEmbeddings`` so that existing code keeps
working; the few additions (``n_ubatch``, ``flash_attn``, ``type_k``/``type_v``,
``min_p``...) are llama.cpp settings those classes could not reach.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.utils.utils import _build_model_kwargs, get_pydantic_field_names
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from typing_extensions import Self

from llamacpp_integrations._runtime import shared_llama
from llamacpp_native import Llama, LlamaGrammar, SamplingOptions

LOAD_SETTINGS = frozenset(inspect.signature(Llama.__init__).parameters) - {"self", "model_path", "seed"}
"""Names ``Llama(...)`` takes: they select (and share) a loaded model."""

PROVIDER = "llamacpp"


def _parameters(*functions: Any) -> frozenset[str]:
    """Keyword names the functions take, their sampling options included."""
    names: set[str] = set(SamplingOptions.__annotations__)
    for function in functions:
        names |= set(inspect.signature(function).parameters)
    return frozenset(names - {"self", "prompt", "rendered", "stream", "cancellation", "kwargs", "options"})


COMPLETION_SETTINGS = _parameters(Llama.completion_request, Llama.create_completion)
"""Per-call settings of a text completion (sampling, limits, grammar, suffix, echo)."""

CHAT_SETTINGS = _parameters(Llama.chat_request) | {
    "tools",
    "tool_choice",
    "response_format",
    "parallel_tool_calls",
    "reasoning_format",
    "chat_template_kwargs",
}
"""Per-call settings of a chat completion."""


def merge_stops(*stops: str | Sequence[str] | None) -> list[str]:
    """Every stop string given, in order, once."""
    merged: list[str] = []
    for stop in stops:
        for item in [stop] if isinstance(stop, str) else stop or []:
            if item and item not in merged:
                merged.append(item)
    return merged


class LlamaCppLoadSettings(BaseModel):
    """How the GGUF model is loaded.  Nothing is loaded until first use.

    Objects naming the same file with the same load settings share one loaded
    model (``llamacpp_integrations._runtime.shared_llama``).
    """

    model_config = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)

    client: Llama | None = Field(
        default=None,
        exclude=True,
        description="An already loaded llamacpp_native.Llama to use instead of loading model_path.",
    )
    model_path: str = Field(
        default="", description="Path of the local .gguf model file (nothing is downloaded)."
    )
    lora_base: str | None = Field(
        default=None, description="Deprecated and ignored: a GGUF LoRA adapter applies to model_path itself."
    )
    lora_path: str | None = Field(
        default=None, description="A LoRA adapter (GGUF) applied to every call, at lora_scale."
    )
    lora_scale: float = Field(default=1.0, description="Scale of the lora_path adapter.")
    lora_adapters: list[tuple[str, float]] | None = Field(
        default=None,
        description="Several LoRA adapters as (path, scale) pairs; a call's lora={name_or_path: scale} "
        "replaces them for that call.",
    )
    n_ctx: int = Field(default=512, description="Context window in tokens (0: the model's training context).")
    n_parts: int = Field(
        default=-1, description="Obsolete llama.cpp setting, accepted and ignored with a warning."
    )
    seed: int = Field(default=-1, description="Sampling seed; -1 draws a random seed for every call.")
    f16_kv: bool = Field(
        default=True, description="KV cache in f16 (True) or f32 (False); see type_k/type_v."
    )
    logits_all: bool = Field(
        default=False,
        description="Obsolete: logprobs are computed per generated token; ignored with a warning.",
    )
    vocab_only: bool = Field(default=False, description="Load only the vocabulary (tokenize, count tokens).")
    use_mlock: bool = Field(default=False, description="Lock the model in RAM.")
    use_mmap: bool | None = Field(default=True, description="Memory-map the model file.")
    n_threads: int | None = Field(
        default=None, description="CPU threads (None: every core this process may use)."
    )
    n_batch: int | None = Field(
        default=512,
        description="Prompt tokens decoded per batch; 512 (community's default: 8) for fast prompts.",
    )
    n_ubatch: int | None = Field(default=None, description="Physical micro-batch size (None: n_batch).")
    n_gpu_layers: int | None = Field(
        default=None, description="Layers to offload to the GPU (None or 0: CPU only)."
    )
    rope_freq_base: float = Field(default=0.0, description="RoPE base frequency (0: the model's own).")
    rope_freq_scale: float = Field(default=0.0, description="RoPE frequency scale (0: the model's own).")
    last_n_tokens_size: int = Field(
        default=64, description="Tokens looked back for the repetition penalties."
    )
    flash_attn: bool | None = Field(default=None, description="Flash attention: True, False or None (auto).")
    type_k: str | None = Field(
        default=None, description="KV cache type of K (f32, f16, q8_0, ...); overrides f16_kv."
    )
    type_v: str | None = Field(
        default=None, description="KV cache type of V (f32, f16, q8_0, ...); overrides f16_kv."
    )
    rpc_servers: list[str] | None = Field(
        default=None,
        description="llamacpp-rpc-server workers ('host:port') that take layers as n_gpu_layers and "
        "tensor_split say. No authentication: trusted networks only.",
    )
    tensor_split: list[float] | None = Field(
        default=None, description="Share of the offloaded layers per device (workers first, then GPUs)."
    )
    main_gpu: int | None = Field(default=None, description="The device used with split_mode='none'.")
    split_mode: str | None = Field(default=None, description="'layer' (default), 'row' or 'none'.")
    offload_kqv: bool | None = Field(
        default=None, description="Keep the KV cache with the offloaded layers (None: yes)."
    )
    draft_model: Any = Field(
        default=None,
        description="Speculative decoding: a draft GGUF path, DraftModel(...) or PromptLookupDecoding() "
        "(llama-cpp-python's draft_model); the output stays the same.",
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="More llamacpp_native.Llama load settings, or per-call sampling settings (typical_p...).",
    )
    verbose: bool = Field(default=True, description="Log llama.cpp's informational output (Python logging).")

    _llama: Llama | None = PrivateAttr(default=None)

    _call_settings: ClassVar[frozenset[str]] = frozenset()
    """Per-call setting names this class accepts (model_kwargs may carry them)."""

    @model_validator(mode="before")
    @classmethod
    def _extra_to_model_kwargs(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        names = get_pydantic_field_names(cls)
        if "callback_manager" in values and "callbacks" in names:
            # langchain-community's examples pass callback_manager=CallbackManager([...]);
            # langchain-core 1.x has no such field, so it would otherwise be dropped silently.
            warnings.warn("callback_manager is deprecated; use callbacks=", DeprecationWarning, stacklevel=2)
            manager = values.pop("callback_manager")
            if values.get("callbacks") is None:
                values["callbacks"] = manager
        return _build_model_kwargs(values, names)

    @model_validator(mode="after")
    def _check_settings(self) -> Self:
        if self.lora_base:
            warnings.warn(
                "lora_base is deprecated and ignored: a GGUF LoRA adapter applies to model_path itself",
                DeprecationWarning,
                stacklevel=2,
            )
        if self.n_parts != -1:
            warnings.warn("n_parts is obsolete in llama.cpp and is ignored", UserWarning, stacklevel=2)
        if self.logits_all:
            warnings.warn(
                "logits_all is ignored: logprobs are computed for generated tokens when asked (logprobs=)",
                UserWarning,
                stacklevel=2,
            )
        if not self.model_path and self.client is None:
            raise ValueError(
                "model_path is required: the path of a local .gguf file (or pass client=Llama(...))"
            )
        unknown = set(self.model_kwargs) - LOAD_SETTINGS - self._call_settings
        if unknown:
            warnings.warn(
                f"model_kwargs {sorted(unknown)} are neither llama.cpp load settings nor per-call settings "
                f"of {type(self).__name__} and are ignored",
                UserWarning,
                stacklevel=2,
            )
        return self

    # -- the model -----------------------------------------------------------------------------
    def _load_settings(self) -> dict[str, Any]:
        """What ``Llama(...)`` is given; equal settings share one loaded model."""
        settings: dict[str, Any] = {
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "n_threads": self.n_threads,
            "n_gpu_layers": self.n_gpu_layers,
            "use_mmap": self.use_mmap,
            "use_mlock": self.use_mlock,
            "vocab_only": self.vocab_only,
            "f16_kv": self.f16_kv,
            "type_k": self.type_k,
            "type_v": self.type_v,
            "flash_attn": self.flash_attn,
            "rpc_servers": self.rpc_servers,
            "tensor_split": self.tensor_split,
            "main_gpu": self.main_gpu,
            "split_mode": self.split_mode,
            "offload_kqv": self.offload_kqv,
            "rope_freq_base": self.rope_freq_base,
            "rope_freq_scale": self.rope_freq_scale,
            "last_n_tokens_size": self.last_n_tokens_size,
            "verbose": self.verbose,
            "lora_path": self.lora_path,
            "lora_scale": self.lora_scale if self.lora_path else None,
            "lora_adapters": self.lora_adapters or None,
            "draft_model": self.draft_model,
        }
        settings.update({k: v for k, v in self.model_kwargs.items() if k in LOAD_SETTINGS})
        return {k: v for k, v in settings.items() if v is not None}

    @property
    def llama(self) -> Llama:
        """The ``llamacpp_native.Llama`` in use, loaded (and shared) on first access."""
        if self.client is not None:
            return self.client
        llama = self._llama
        if llama is None or llama.model.closed:
            llama = self._llama = shared_llama(self.model_path, self._load_settings())
        return llama

    @property
    def _model_identity(self) -> dict[str, Any]:
        """What selects the weights: the model file and its LoRA adapters (part of LangChain's cache key)."""
        identity: dict[str, Any] = {"model_path": self.model_path}
        if self.lora_path:
            identity.update(lora_path=self.lora_path, lora_scale=self.lora_scale)
        if self.lora_adapters:
            identity["lora_adapters"] = self.lora_adapters
        return identity

    @property
    def model_name(self) -> str:
        """The model file's name, as reported in ``response_metadata`` and traces."""
        path = self.model_path or (self.client.model_path if self.client is not None else "")
        return os.path.basename(path) or path

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer (no BOS added)."""
        return self.llama.tokenize(text, add_bos=False)


class LlamaCppGenerationSettings(LlamaCppLoadSettings):
    """Load settings plus the sampling settings that every generating class shares."""

    suffix: str | None = Field(default=None, description="Text appended to each completion.")
    max_tokens: int | None = Field(default=256, description="Most tokens to generate (None or 0: no limit).")
    temperature: float = Field(default=0.8, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(default=0.95, description="Nucleus sampling threshold.")
    top_k: int = Field(default=40, description="Sample among the k most likely tokens (0: all).")
    min_p: float = Field(default=0.05, description="Drop tokens below min_p times the top probability.")
    repeat_penalty: float = Field(default=1.1, description="Penalty for repeated tokens (1.0: none).")
    logprobs: int | None = Field(
        default=None, description="Return log-probabilities of this many top tokens."
    )
    echo: bool = Field(default=False, description="Prepend the prompt to the completion.")
    stop: list[str] | None = Field(
        default=None, description="Stop strings; a call's own stop strings are added to these."
    )
    streaming: bool = Field(
        default=True, description="Accepted for compatibility: generation always streams internally."
    )
    grammar_path: str | Path | None = Field(
        default=None,
        description="A GBNF file, or a bundled grammar name ('json', 'list'), to constrain output.",
    )
    grammar: str | LlamaGrammar | None = Field(
        default=None, description="A GBNF grammar (text or LlamaGrammar) to constrain output."
    )

    _grammar: LlamaGrammar | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_grammar(self) -> Self:
        if self.grammar is not None and self.grammar_path is not None:
            raise ValueError(
                "Can only pass in one of grammar and grammar_path. Received "
                f"grammar={self.grammar!r} and grammar_path={self.grammar_path!r}."
            )
        return self

    def _default_grammar(self) -> LlamaGrammar | None:
        """The instance's grammar, read on first use (a path, a bundled name or GBNF text)."""
        if self._grammar is None:
            if isinstance(self.grammar, LlamaGrammar):
                self._grammar = self.grammar
            elif self.grammar:
                self._grammar = LlamaGrammar.from_string(self.grammar)
            elif self.grammar_path is not None:
                self._grammar = LlamaGrammar.from_file(self.grammar_path)
        return self._grammar

    def _instance_settings(self) -> dict[str, Any]:
        """Per-call defaults that only some classes have (suffix, echo, logprobs...)."""
        return {}

    def _sampling(self, stop: Sequence[str] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Per-call settings: instance defaults, then model_kwargs, then the call's own."""
        unknown = [k for k in kwargs if k not in self._call_settings and not k.startswith("ls_")]
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword arguments {unknown}; "
                f"per-call settings are {sorted(self._call_settings)}"
            )
        params: dict[str, Any] = {
            **self._instance_settings(),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "seed": self.seed if self.seed >= 0 else None,
        }
        grammar = self._default_grammar()
        if grammar is not None:
            params["grammar"] = grammar
        params.update({k: v for k, v in self.model_kwargs.items() if k in self._call_settings})
        params.update({k: v for k, v in kwargs.items() if not k.startswith("ls_")})
        params["stop"] = merge_stops(self.stop, params.get("stop"), stop)
        return params

    def _ls_common(self, stop: Sequence[str] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {
            "ls_provider": PROVIDER,
            "ls_model_name": kwargs.get("model") or self.model_name,
            "ls_temperature": kwargs.get("temperature", self.temperature),
        }
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens:
            params["ls_max_tokens"] = max_tokens
        stops = merge_stops(self.stop, stop)
        if stops:
            params["ls_stop"] = stops
        return params
