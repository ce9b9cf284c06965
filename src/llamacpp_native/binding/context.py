"""An inference context: KV cache, batch decoding, logits and embeddings."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from llamacpp_native.binding._library import CallLog, ffi, lib, sync_log_level
from llamacpp_native.binding.gate import Gate
from llamacpp_native.binding.lora import LoraAdapter, LoraSet, normalise_lora
from llamacpp_native.binding.model import Model
from llamacpp_native.errors import (
    ClosedError,
    ContextError,
    ContextOverflowError,
    DecodeError,
    GenerationCancelled,
)

KV_TYPES = {
    "f32": "GGML_TYPE_F32",
    "f16": "GGML_TYPE_F16",
    "bf16": "GGML_TYPE_BF16",
    "q8_0": "GGML_TYPE_Q8_0",
    "q4_0": "GGML_TYPE_Q4_0",
    "q4_1": "GGML_TYPE_Q4_1",
    "q5_0": "GGML_TYPE_Q5_0",
    "q5_1": "GGML_TYPE_Q5_1",
    "iq4_nl": "GGML_TYPE_IQ4_NL",
}
POOLING = {
    name: getattr(lib, f"LLAMA_POOLING_TYPE_{name.upper()}")
    for name in ("unspecified", "none", "mean", "cls", "last", "rank")
}
"""``pooling`` names and llama.cpp's values for them, read from the compiled module."""
RANK = POOLING["rank"]
FLASH_ATTN = {
    None: lib.LLAMA_FLASH_ATTN_TYPE_AUTO,
    False: lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    True: lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
}
"""``flash_attn`` (``None`` lets llama.cpp decide) and llama.cpp's values for it."""

DECODE_NO_KV_SLOT = 1
DECODE_ABORTED = 2


def _free_batch(batch: Any) -> None:
    lib.llama_batch_free(batch[0])


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _kv_type(name: str) -> int:
    key = name.lower()
    if key not in KV_TYPES:
        raise ContextError(f"unknown KV cache type {name!r}; choose one of {sorted(KV_TYPES)}")
    return int(getattr(lib, KV_TYPES[key]))


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or value <= 0:
        raise ContextError(f"{name} must be a positive integer, got {value!r}")
    return value


class Context:
    """A llama.cpp context over a ``Model``: owns the KV cache and a decode batch.

    Freed exactly once (``close()``, ``with``, or garbage collection).  Keeps its
    model alive.  Each call runs inside the context's ``gate``: ``close()`` (or
    closing the model) refuses new calls with ``ClosedError``, aborts a decode in
    progress and waits for the calls in flight before freeing anything.  Not
    thread-safe by itself: hold ``context.lock`` around a sequence of calls that
    must not interleave (the generation engine does).
    """

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_seq_max: int = 1,
        n_outputs_max: int = 0,
        f16_kv: bool = True,
        type_k: str | None = None,
        type_v: str | None = None,
        flash_attn: bool | None = None,
        offload_kqv: bool = True,
        embeddings: bool = False,
        pooling: str = "unspecified",
        rope_freq_base: float = 0.0,
        rope_freq_scale: float = 0.0,
        swa_full: bool = False,
    ) -> None:
        if not isinstance(n_ctx, int) or n_ctx < 0:
            raise ContextError(f"n_ctx must be >= 0 (0 = the model's training context), got {n_ctx!r}")
        n_batch = _positive("n_batch", n_batch)
        n_ubatch = _positive("n_ubatch", n_ubatch if n_ubatch is not None else n_batch)
        n_seq_max = _positive("n_seq_max", n_seq_max)
        threads = _positive("n_threads", n_threads if n_threads is not None else default_threads())
        threads_batch = _positive(
            "n_threads_batch", n_threads_batch if n_threads_batch is not None else threads
        )
        if pooling not in POOLING:
            raise ContextError(f"pooling must be one of {sorted(POOLING)}, not {pooling!r}")
        if flash_attn not in FLASH_ATTN:
            raise ContextError(f"flash_attn must be True, False or None (auto), not {flash_attn!r}")
        default_kv = "f16" if f16_kv else "f32"

        sync_log_level()
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx if n_ctx > 0 else model.n_ctx_train
        params.n_batch = n_batch
        params.n_ubatch = min(n_ubatch, n_batch)
        params.n_seq_max = n_seq_max
        params.n_outputs_max = max(0, n_outputs_max)  # 0: up to n_batch outputs
        params.n_threads = threads
        params.n_threads_batch = threads_batch
        params.type_k = _kv_type(type_k or default_kv)
        params.type_v = _kv_type(type_v or default_kv)
        params.flash_attn_type = FLASH_ATTN[flash_attn]
        params.offload_kqv = offload_kqv
        params.embeddings = embeddings
        params.pooling_type = POOLING[pooling]
        params.rope_freq_base = rope_freq_base
        params.rope_freq_scale = rope_freq_scale
        params.no_perf = False
        params.kv_unified = n_seq_max > 1  # every sequence may use the whole window
        params.swa_full = swa_full
        self._abort_flag = ffi.new("int *", 0)
        params.abort_callback = lib.lcpp_abort_when_flag_set
        params.abort_callback_data = self._abort_flag

        self.gate = Gate("context")
        """Every native call on the context runs inside it (``with context.gate:``)."""
        self._close_lock = threading.Lock()
        with model.gate:  # registered before the model can start closing, so its close() closes this
            self._create(model, params)

    def _create(self, model: Model, params: Any) -> None:
        """Create the native context and register it with ``model`` (inside the model's gate)."""
        n_embd = model.n_embd
        with CallLog() as log:
            raw = lib.llama_init_from_model(model.handle, params)
        if raw == ffi.NULL:
            raise ContextError(
                f"failed to create a context (n_ctx={params.n_ctx}, n_batch={params.n_batch}, "
                f"n_seq_max={params.n_seq_max}): "
                f"{log.reason()}. Try a smaller n_ctx or n_seq_max."
            )
        self._handle: Any = ffi.gc(raw, lib.llama_free)
        self.model = model
        self._n_embd = n_embd
        self._n_cls_out = int(lib.llama_model_n_cls_out(model.handle))
        self._batch: Any = ffi.new("llama_batch *", lib.llama_batch_init(params.n_batch, 0, params.n_seq_max))
        self._free_batch = weakref.finalize(self, _free_batch, self._batch)
        self.lock = threading.RLock()
        self.n_ctx: int = int(lib.llama_n_ctx(raw))
        self.n_batch: int = int(lib.llama_n_batch(raw))
        self.n_seq_max: int = int(lib.llama_n_seq_max(raw))
        self.n_threads = int(params.n_threads)
        self.embeddings_enabled = bool(params.embeddings)
        self.pooling: int = int(lib.llama_pooling_type(raw))
        self._memory = lib.llama_get_memory(raw)
        self._lora: LoraSet = ()
        self.before_close: Callable[[], None] | None = None
        """Called once by ``close()`` before anything is freed (an engine stops its decode thread)."""
        model._register_context(self)

    # -- lifetime -----------------------------------------------------------------
    @property
    def handle(self) -> Any:
        """The raw ``llama_context *`` (``ClosedError`` once closing); use it inside ``context.gate``."""
        if self._handle is None or self.gate.closing:
            raise ClosedError("context is closed")
        return self._handle

    @property
    def batch(self) -> Any:
        """The context's reusable ``llama_batch *`` (capacity ``n_batch``)."""
        self.handle  # noqa: B018 - raises if closed
        return self._batch

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._handle is None

    def close(self) -> None:
        """Free the context and its batch, once the calls in flight have left.  Safe to call twice.

        ``before_close`` runs first (an engine stops its decode thread, which may
        still call the context meanwhile); then new calls get ``ClosedError``, a
        decode in progress is aborted (it raises ``ClosedError``), and the calls in
        flight are waited for.  From inside a call on this context it raises
        ``CloseInsideCallError`` and changes nothing.
        """
        if self._handle is None:
            return
        self.gate.check_close()
        with self._close_lock:
            if self._handle is None:
                return
            hook, self.before_close = self.before_close, None
            if hook is not None:
                hook()
            self.gate.close(interrupt=self.request_abort)
            handle, self._handle = self._handle, None
            self._free_batch()
            ffi.release(handle)
        with self.model._lora_lock:
            released, self._lora = self._lora, ()
            for adapter, _scale in released:
                adapter._release_if_unused()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cancellation ---------------------------------------------------------------
    def request_abort(self) -> None:
        """Ask the decode in progress (from any thread) to stop as soon as it can."""
        self._abort_flag[0] = 1

    def clear_abort(self) -> None:
        """Re-arm decoding after an abort."""
        self._abort_flag[0] = 0

    @property
    def abort_requested(self) -> bool:
        """Whether an abort is pending."""
        return bool(self._abort_flag[0])

    # -- LoRA adapters ------------------------------------------------------------
    @property
    def lora(self) -> LoraSet:
        """The adapters (with scales) every decode applies, as ``normalise_lora`` gives them."""
        return self._lora

    @property
    def lora_adapters(self) -> frozenset[LoraAdapter]:
        """The adapters applied, without their scales."""
        return frozenset(adapter for adapter, _scale in self._lora)

    def set_lora(self, adapters: Iterable[tuple[LoraAdapter, float]]) -> None:
        """Apply these adapters with their scales to every later decode (nothing: the base model).

        The KV cache already computed stays as it was: keep sequences decoded under
        one set apart from those of another.  Not while a decode runs on another thread.
        """
        lora = normalise_lora(adapters)
        for adapter, _scale in lora:
            if adapter.model is not self.model:
                raise ValueError(f"LoRA adapter {adapter.path.name} was loaded for another model")
        with self.gate, self.model._lora_lock:
            handles = ffi.new("struct llama_adapter_lora *[]", [a.handle for a, _s in lora])
            scales = ffi.new("float[]", [s for _a, s in lora])
            lib.llama_set_adapters_lora(self.handle, handles, len(lora), scales)
            released, self._lora = self._lora, lora
            for adapter, _scale in released:
                adapter._release_if_unused()

    # -- decoding -----------------------------------------------------------------
    def check_status(self, status: int, what: str = "decode", reason: str = "") -> None:
        """Turn a llama_decode status into the matching exception (``reason``: what llama.cpp
        logged during that decode, from a ``CallLog``)."""
        if status == 0:
            return
        if status == DECODE_ABORTED:
            if self.gate.closing:
                raise ClosedError(f"the context was closed during the {what}")
            raise GenerationCancelled(f"{what} was cancelled")
        if status == DECODE_NO_KV_SLOT:
            raise ContextOverflowError(
                f"{what} failed: no room left in the KV cache (n_ctx={self.n_ctx}); "
                "use a larger n_ctx or a shorter prompt"
            )
        raise DecodeError(f"{what} failed with status {status}: {reason or 'no reason given'}")

    def decode(self, tokens: Sequence[int], pos0: int = 0, seq_id: int = 0) -> None:
        """Decode ``tokens`` of one sequence starting at ``pos0``; logits of the last one are kept."""
        if not tokens:
            return
        self._check_fits(len(tokens), pos0)
        self.model.vocab.check_tokens(tokens)
        arr = ffi.new("llama_token[]", list(tokens))
        with self.gate, CallLog() as log:
            status = lib.lcpp_decode_sequence(
                self.handle, self._batch, self.n_batch, arr, len(tokens), pos0, seq_id
            )
        self.check_status(status, reason=log.errors)

    def decode_many(
        self, sequences: Sequence[tuple[Sequence[int], int, int]], all_outputs: bool = False
    ) -> list[int]:
        """Decode several sequences together: ``(tokens, pos0, seq_id)`` each.

        All tokens go through as few ``llama_decode`` calls as ``n_batch`` allows.
        ``all_outputs`` marks every token as an output (pooled embeddings need it).
        Returns, per sequence, the logits index of its last token in the final batch
        it appeared in (pass to the sampler); -1 where that is not the final batch.
        """
        flat = [
            (token, pos0 + i, seq_id, i == len(tokens) - 1)
            for tokens, pos0, seq_id in sequences
            for i, token in enumerate(tokens)
        ]
        for tokens, pos0, _seq in sequences:
            self._check_fits(len(tokens), pos0)
            self.model.vocab.check_tokens(tokens)
        last_index: dict[int, int] = {}
        with self.gate:
            handle, batch = self.handle, self._batch
            for start in range(0, len(flat), self.n_batch):
                chunk = flat[start : start + self.n_batch]
                batch.n_tokens = 0
                last_index.clear()
                for i, (token, pos, seq_id, last) in enumerate(chunk):
                    lib.lcpp_batch_add(batch, token, pos, seq_id, last or all_outputs)
                    if last:
                        last_index[seq_id] = i
                with CallLog() as log:
                    status = lib.llama_decode(handle, batch[0])
                self.check_status(status, reason=log.errors)
        return [last_index.get(seq_id, -1) for _t, _p, seq_id in sequences]

    def _check_fits(self, n_tokens: int, pos0: int) -> None:
        if pos0 + n_tokens > self.n_ctx:
            raise ContextOverflowError(
                f"{pos0 + n_tokens} tokens do not fit in the context window of {self.n_ctx} tokens; "
                "shorten the prompt or create the model with a larger n_ctx"
            )

    def logits(self, index: int = -1) -> list[float]:
        """Copy of the logits at batch output ``index`` (-1 = last)."""
        with self.gate:
            ptr = lib.llama_get_logits_ith(self.handle, index)
            if ptr == ffi.NULL:
                raise DecodeError(f"no logits at output index {index}; decode something first")
            return list(ffi.unpack(ptr, self.model.vocab.n_tokens))

    def embedding(self, seq_id: int = 0, index: int = -1) -> list[float]:
        """Pooled embedding of sequence ``seq_id``; without pooling, the token's at batch ``index``.

        Under rank pooling it is the classifier's ``n_cls_out`` scores (a reranker: one).
        """
        if not self.embeddings_enabled:
            raise ContextError("this context was created without embeddings=True")
        with self.gate:
            handle = self.handle
            ptr = lib.llama_get_embeddings_seq(handle, seq_id) if self.pooling > 0 else ffi.NULL
            if ptr == ffi.NULL:
                ptr = lib.llama_get_embeddings_ith(handle, index)
            if ptr == ffi.NULL:
                raise DecodeError("no embeddings available; decode a sequence first")
            return list(ffi.unpack(ptr, self._n_cls_out if self.pooling == RANK else self._n_embd))

    # -- KV cache -----------------------------------------------------------------
    def kv_clear(self) -> None:
        """Forget every sequence in the KV cache."""
        with self.gate:
            lib.llama_memory_clear(lib.llama_get_memory(self.handle), True)

    def kv_remove(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        """Remove positions [p0, p1) of ``seq_id`` (-1: open end; seq -1: all sequences)."""
        with self.gate:
            return bool(lib.llama_memory_seq_rm(lib.llama_get_memory(self.handle), seq_id, p0, p1))

    def kv_copy(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Share positions [p0, p1) of sequence ``src`` with sequence ``dst``."""
        with self.gate:
            lib.llama_memory_seq_cp(lib.llama_get_memory(self.handle), src, dst, p0, p1)

    def kv_keep(self, seq_id: int) -> None:
        """Remove every sequence except ``seq_id``."""
        with self.gate:
            lib.llama_memory_seq_keep(lib.llama_get_memory(self.handle), seq_id)

    def kv_pos_max(self, seq_id: int) -> int:
        """Largest position stored for ``seq_id`` (-1 if empty)."""
        with self.gate:
            return int(lib.llama_memory_seq_pos_max(lib.llama_get_memory(self.handle), seq_id))

    # -- state ----------------------------------------------------------------------
    def save_state(self, seq_id: int | None = None) -> bytes:
        """Serialise the whole context state, or one sequence's."""
        with self.gate:
            handle = self.handle
            if seq_id is None:
                size = lib.llama_state_get_size(handle)
                buf = ffi.new("uint8_t[]", size)
                written = lib.llama_state_get_data(handle, buf, size)
            else:
                size = lib.llama_state_seq_get_size(handle, seq_id)
                buf = ffi.new("uint8_t[]", size)
                written = lib.llama_state_seq_get_data(handle, buf, size, seq_id)
        return bytes(ffi.buffer(buf, written))

    def load_state(self, state: bytes, seq_id: int | None = None) -> None:
        """Restore a state from ``save_state`` (into ``seq_id`` for a sequence state)."""
        if seq_id is None:
            # llama.cpp trusts the leading length field; refuse data whose field overruns it.
            if len(state) < 4 or int.from_bytes(state[:4], "little") > len(state):
                raise ContextError(
                    "state could not be restored: it is not a saved context state "
                    "(its size field does not match)"
                )
            with self.gate:
                read = lib.llama_state_set_data(self.handle, state, len(state))
        else:
            with self.gate:
                read = lib.llama_state_seq_set_data(self.handle, state, len(state), seq_id)
        if read == 0:
            raise ContextError("state could not be restored (saved from another model or context size?)")

    def perf(self) -> dict[str, float]:
        """llama.cpp's timing counters for this context."""
        with self.gate:
            data = lib.llama_perf_context(self.handle)
        return {
            "prompt_ms": data.t_p_eval_ms,
            "eval_ms": data.t_eval_ms,
            "prompt_tokens": data.n_p_eval,
            "eval_tokens": data.n_eval,
        }
