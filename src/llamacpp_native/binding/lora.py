"""LoRA adapters: GGUF files that add low-rank updates to a model's weights.

An adapter is loaded once per model (``Model.load_lora``) and applied to a
context with a scale per adapter (``Context.set_lora``).  Many requests can use
one loaded adapter, each with its own scale.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from llamacpp_native.binding._library import CallLog, ffi, lib, read_metadata
from llamacpp_native.binding.gate import Gate
from llamacpp_native.binding.gguf_header import GGUFFormatError, GGUFType, GGUFValue, read_gguf_metadata
from llamacpp_native.errors import ClosedError, LoraError


class AdapterOwner(Protocol):
    """What an adapter needs of its model: ``binding.model.Model``, which loads adapters
    (``Model.load_lora``) and so is the module that imports this one, not the other way round."""

    @property
    def gate(self) -> Gate: ...
    @property
    def _lora_lock(self) -> AbstractContextManager[Any]: ...
    @property
    def handle(self) -> Any: ...
    @property
    def closed(self) -> bool: ...
    @property
    def architecture(self) -> str: ...
    def _register_adapter(self, adapter: LoraAdapter) -> None: ...
    def _lora_in_use(self, adapter: LoraAdapter) -> bool: ...


STRING_KEYS = ("general.type", "general.architecture", "adapter.type")
"""Keys llama.cpp's loader reads as strings (any other type would abort the process)."""


def _check_adapter_file(path: Path, model: AdapterOwner) -> None:
    """Raise ``LoraError`` for anything llama.cpp's loader would reject, or would abort on."""
    if not path.exists():
        raise LoraError(f"LoRA adapter file not found: {path}")
    if not path.is_file():
        raise LoraError(f"LoRA adapter path is not a file (a directory?): {path}")
    try:
        metadata = read_gguf_metadata(path)
    except (GGUFFormatError, OSError) as error:
        raise LoraError(f"not a LoRA adapter: {path}: {error}") from None
    for key in STRING_KEYS:
        entry = metadata.get(key)
        if entry is not None and (entry.type != GGUFType.STRING or entry.is_array):
            raise LoraError(f"not a LoRA adapter: {path}: {key} must be a string, not {_describe(entry)}")
    kind = _string(metadata, "general.type")
    if kind != "adapter":
        hint = "; it is a model: pass it as model_path" if kind == "model" else ""
        raise LoraError(f"not a LoRA adapter: {path}: general.type is {kind!r}, not 'adapter'{hint}")
    adapter_type = _string(metadata, "adapter.type")
    if adapter_type != "lora":
        raise LoraError(f"not a LoRA adapter: {path}: adapter.type is {adapter_type!r}, not 'lora'")
    architecture = _string(metadata, "general.architecture")
    if architecture != model.architecture:
        raise LoraError(
            f"LoRA adapter {path} is for architecture {architecture!r}, "
            f"but the model is {model.architecture!r}"
        )
    alpha = metadata.get("adapter.lora.alpha")
    if alpha is not None and (alpha.type != GGUFType.FLOAT32 or alpha.is_array):
        raise LoraError(
            f"bad LoRA adapter {path}: adapter.lora.alpha must be a float32, not {_describe(alpha)}"
        )
    if "adapter.alora.invocation_tokens" in metadata:
        raise LoraError(
            f"{path} is an activated LoRA (aLoRA), which needs invocation tracking this engine does not do"
        )


def _string(metadata: dict[str, GGUFValue], key: str) -> str:
    entry = metadata.get(key)
    return str(entry.value) if entry is not None else ""


def _describe(entry: GGUFValue) -> str:
    return f"an array of {entry.type.name}" if entry.is_array else entry.type.name


def _free_adapter(model: AdapterOwner, raw: Any) -> None:
    """Free one adapter handle, unless closing the model already freed it."""
    with model._lora_lock:
        if not model.closed:
            lib.llama_adapter_lora_free(raw)


class LoraAdapter:
    """A LoRA adapter loaded for one model (``Model.load_lora``).

    The handle is freed exactly once: by ``close()``, when the adapter is garbage
    collected, or when its model closes (which closes its adapters first).  An
    adapter keeps its model alive; a context that applies it keeps the adapter
    alive, and an adapter closed while a context still applies it is freed when
    that context lets go of it.  Compared and hashed by identity.
    """

    def __init__(self, model: AdapterOwner, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.model = model
        _check_adapter_file(self.path, model)
        with model.gate, model._lora_lock:  # closing the model waits, then frees the adapter
            with CallLog() as log:
                raw = lib.llama_adapter_lora_init(model.handle, os.fsencode(self.path))
            if raw == ffi.NULL:
                raise LoraError(f"failed to load LoRA adapter {self.path}: {log.reason()}")
            self._raw: Any = raw
            self._closing = False
            self._free = weakref.finalize(self, _free_adapter, model, raw)
            self._free.atexit = False  # at exit the process frees everything at once
            model._register_adapter(self)
            self.metadata: dict[str, str] = read_metadata(
                raw,
                lib.llama_adapter_meta_count,
                lib.llama_adapter_meta_key_by_index,
                lib.llama_adapter_meta_val_str_by_index,
            )
        """The adapter's GGUF metadata (scalar keys), values rendered as strings by llama.cpp."""
        self.alpha: float = float(self.metadata.get("adapter.lora.alpha") or 0.0)
        """LoRA alpha: a scale s applies ``s * alpha / rank`` (just ``s`` when alpha is 0 or absent)."""

    @property
    def task_name(self) -> str | None:
        """The ``adapter.lora.task_name`` key, where the adapter has one."""
        return self.metadata.get("adapter.lora.task_name") or None

    @property
    def handle(self) -> Any:
        """The raw ``llama_adapter_lora *`` (raises ``ClosedError`` after close)."""
        if self._closing or not self._free.alive:
            raise ClosedError(f"LoRA adapter {self.path.name} is closed")
        return self._raw

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called (or the model closed)."""
        return self._closing or not self._free.alive

    def close(self) -> None:
        """Free the adapter; if a context still applies it, when that context lets go.  Safe twice."""
        with self.model._lora_lock:
            self._closing = True
            self._release_if_unused()

    def _release_if_unused(self) -> None:
        """Free a closed adapter that no open context applies (call with the model's LoRA lock)."""
        if self._closing and not self.model._lora_in_use(self):
            self._free()

    def __enter__(self) -> LoraAdapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"alpha={self.alpha:g}"
        return f"<LoraAdapter {self.path.name}: {state}>"


LoraSet: TypeAlias = tuple[tuple[LoraAdapter, float], ...]
"""Adapters with their scales, as ``normalise_lora`` returns them (hashable, comparable)."""


def normalise_lora(pairs: Iterable[tuple[LoraAdapter, float]]) -> LoraSet:
    """Adapters with scales in one canonical order, zero scales dropped (they change nothing).

    Equal sets compare equal, so a scheduler can tell whether two requests may
    share a batch.  Raises ``ValueError`` for a non-finite scale or an adapter
    given twice.
    """
    result: dict[LoraAdapter, float] = {}
    for adapter, scale in pairs:
        if not isinstance(adapter, LoraAdapter):
            raise TypeError(f"expected a LoraAdapter, got {type(adapter).__name__}")
        value = float(scale)
        if not math.isfinite(value):
            raise ValueError(f"the scale of LoRA adapter {adapter.path.name} must be finite, not {scale!r}")
        if adapter in result:
            raise ValueError(f"LoRA adapter {adapter.path.name} is given twice")
        result[adapter] = value
    ordered = sorted(result.items(), key=lambda item: (str(item[0].path), id(item[0])))
    return tuple((adapter, scale) for adapter, scale in ordered if scale != 0.0)
