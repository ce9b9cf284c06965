"""Loading a GGUF model and reading what it says about itself."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from llamacpp_native.binding import offload, rpc
from llamacpp_native.binding._library import CallLog, ensure_backend, ffi, lib, read_metadata, sync_log_level
from llamacpp_native.binding.gate import Gate
from llamacpp_native.binding.gguf_header import GGUF_MAGIC
from llamacpp_native.binding.lora import LoraAdapter
from llamacpp_native.binding.vocab import Vocab
from llamacpp_native.errors import ClosedError, ModelLoadError, ModelNotFoundError, RpcServerError

ProgressCallback = Callable[[float], object]
"""Called with load progress in [0, 1]; returning ``False`` aborts the load."""

SPLIT_MODES = {name: getattr(lib, f"LLAMA_SPLIT_MODE_{name.upper()}") for name in ("none", "layer", "row")}
"""``split_mode`` names and llama.cpp's values for them, read from the compiled module (``"tensor"`` waits
for ``LLAMA_SPLIT_MODE_TENSOR`` in csrc/llama_cdef.h)."""


@ffi.def_extern()  # type: ignore[untyped-decorator]
def lcpp_on_progress(progress: float, user_data: Any) -> bool:
    """Forward llama.cpp's load progress to the Python callback in ``user_data``."""
    callback = ffi.from_handle(user_data)
    try:
        return callback(float(progress)) is not False
    except Exception:  # an exception cannot cross into C: treat it as "abort"
        return False


def _check_device_settings(
    devices: Sequence[Any],
    n_gpu_layers: int,
    split_mode: str,
    main_gpu: int,
    tensor_split: Sequence[float] | None,
) -> None:
    """Refuse offload settings the devices cannot meet, before llama.cpp sees them (CUDA may abort)."""
    if n_gpu_layers == 0 or not devices:
        return  # nothing is offloaded: llama.cpp ignores main_gpu and tensor_split
    count = len(devices)
    if split_mode in ("none", "row") and main_gpu >= count:
        raise ValueError(
            f"main_gpu={main_gpu} names no device: {count} offload device(s) seen, numbered 0 to {count - 1}"
        )
    if tensor_split is None:
        return
    shares = [float(share) for share in tensor_split]
    if len(shares) > count:
        raise ValueError(f"tensor_split has {len(shares)} entries for {count} offload device(s)")
    if any(not math.isfinite(share) or share < 0 for share in shares):
        raise ValueError(f"tensor_split shares must be finite and not negative, not {shares}")
    if sum(shares) <= 0:
        raise ValueError(f"tensor_split gives no device a share: {shares}")


def _check_model_file(path: Path) -> None:
    """Raise a precise error for paths llama.cpp would reject with only a log line."""
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelNotFoundError(f"model path is not a file (a directory?): {path}")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if len(magic) == 0:
        raise ModelLoadError(f"model file is empty: {path}")
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"not a GGUF file (magic {magic!r}, expected b'GGUF'): {path}; "
            "convert the model to GGUF with llama.cpp's convert_hf_to_gguf.py"
        )


def _load_mode(use_mmap: bool, use_mlock: bool) -> int:
    if use_mmap and use_mlock:
        return int(lib.LLAMA_LOAD_MODE_MMAP_MLOCK)
    if use_mmap:
        return int(lib.LLAMA_LOAD_MODE_MMAP)
    if use_mlock:
        return int(lib.LLAMA_LOAD_MODE_MLOCK)
    return int(lib.LLAMA_LOAD_MODE_NONE)


_rpc_models: weakref.WeakSet[Model] = weakref.WeakSet()
"""Open models with RPC workers: checked at interpreter exit (``Model.close_those_with_lost_workers``)."""


class Model:
    """A loaded GGUF model: weights, metadata and vocabulary.

    Owns its ``llama_model`` handle and frees it exactly once, on ``close()``,
    on leaving a ``with`` block, or when garbage-collected.  Contexts, LoRA
    adapters, projectors and chat templates created from it keep it alive.
    ``close()`` first refuses new calls (``ClosedError``) and waits for those in
    flight on the model, its vocabulary and everything made from it, then closes
    its contexts, projectors, chat templates and adapters, then frees the weights.

    Offloading: ``n_gpu_layers`` layers (-1: all) go to the offload devices, split
    between them as ``tensor_split`` says (default: by free memory), or all to
    device ``main_gpu`` with ``split_mode="none"``.  The offload devices are the
    devices of the ``rpc_servers`` workers, in the order given, then the local
    GPUs.  Each worker is checked from Python first (``RpcServerError`` names a bad
    address).  ``offload_report()`` says where the layers and buffers went.
    ``use_extra_bufts=False`` turns off the CPU's repacked weight layouts (an RPC
    worker's CPU device never uses them, so only then does a split computation
    match a local one bit for bit).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_gpu_layers: int = 0,
        main_gpu: int = 0,
        split_mode: str = "layer",
        tensor_split: Sequence[float] | None = None,
        use_mmap: bool = True,
        use_mlock: bool = False,
        vocab_only: bool = False,
        progress: ProgressCallback | None = None,
        rpc_servers: Sequence[str] | None = None,
        use_extra_bufts: bool = True,
    ) -> None:
        self.path = Path(path)
        self.gate = Gate(f"model {self.path.name}")
        """Every native call on the model or its vocabulary runs inside it (``with model.gate:``)."""
        _check_model_file(self.path)
        ensure_backend()
        sync_log_level()
        if split_mode not in SPLIT_MODES:
            raise ValueError(f"split_mode must be one of {sorted(SPLIT_MODES)}, not {split_mode!r}")
        local_devices = offload.local_offload_devices()
        # llama_supports_gpu_offload() is true in every build with the RPC backend, so ask for devices
        if n_gpu_layers != 0 and not local_devices and not rpc_servers:
            warnings.warn(
                f"n_gpu_layers={n_gpu_layers} ignored: this build has no GPU backend (or sees no GPU); "
                "running on CPU. "
                'Rebuild with CMAKE_ARGS="-DGGML_CUDA=on" (or Metal/Vulkan) to offload, '
                "or give rpc_servers.",
                RuntimeWarning,
                stacklevel=2,
            )
        if rpc_servers and n_gpu_layers == 0:
            warnings.warn(
                "rpc_servers given with n_gpu_layers=0: every layer stays on this machine's CPU; "
                "set n_gpu_layers (-1: all layers) to put layers on the workers",
                RuntimeWarning,
                stacklevel=2,
            )
        params = lib.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.main_gpu = main_gpu
        params.split_mode = SPLIT_MODES[split_mode]
        params.load_mode = _load_mode(use_mmap, use_mlock)
        params.vocab_only = vocab_only
        params.use_extra_bufts = use_extra_bufts
        keep_alive: list[Any] = []
        self._rpc_servers: list[str] = []
        rpc_devices: list[Any] = []
        if rpc_servers:
            self._rpc_servers, rpc_devices = rpc.acquire(rpc_servers)
            devices = ffi.new("ggml_backend_dev_t[]", [*rpc_devices, *local_devices, ffi.NULL])
            params.devices = devices
            keep_alive.append(devices)
        self._release_rpc = weakref.finalize(self, rpc.release, list(self._rpc_servers))
        self._lost: str | None = None
        """Why the model is unusable (a worker stopped), once found; its memory is then never freed."""
        self._lost_reason = ""
        offload_devices = [*rpc_devices, *local_devices]
        _check_device_settings(offload_devices, n_gpu_layers, split_mode, main_gpu, tensor_split)
        if split_mode == "none":
            offload_devices = offload_devices[main_gpu : main_gpu + 1] if main_gpu >= 0 else []
        self._offload_devices = offload_devices
        if tensor_split is not None:
            max_devices = int(lib.llama_max_devices())
            split = ffi.new("float[]", max_devices)
            for i, share in enumerate(tensor_split):
                split[i] = share
            params.tensor_split = split
            keep_alive.append(split)
        if progress is not None:
            handle = ffi.new_handle(progress)
            params.progress_callback = lib.lcpp_on_progress
            params.progress_callback_user_data = handle
            keep_alive.append(handle)
        with CallLog(keep_lines=True) as log:
            raw = lib.llama_model_load_from_file(os.fsencode(self.path), params)
        self._load_log = log.lines
        if raw == ffi.NULL:
            self._release_rpc()
            raise ModelLoadError(f"failed to load model {self.path}: {log.reason()}")
        self._handle: Any = ffi.gc(raw, lib.llama_model_free, size=int(lib.llama_model_size(raw)))
        self._contexts: weakref.WeakSet[Any] = weakref.WeakSet()
        self._adapters: weakref.WeakSet[LoraAdapter] = weakref.WeakSet()
        self._lora_lock = threading.RLock()
        """Serialises loading, freeing and applying this model's adapters."""
        self._dependents: weakref.WeakSet[Any] = weakref.WeakSet()
        """Projectors and chat templates made from the model (each has ``gate`` and ``close()``)."""
        self._close_lock = threading.Lock()
        self.vocab = Vocab(self, lib.llama_model_get_vocab(raw))
        if self._rpc_servers:
            _rpc_models.add(self)

    # -- lifetime -----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._handle is None or self.gate.closing:
            raise ClosedError(f"model {self.path.name} is closed")
        if self._lost is not None:
            raise RpcServerError(self._lost)

    @property
    def handle(self) -> Any:
        """The raw ``llama_model *`` (``ClosedError`` once closing, ``RpcServerError`` once unusable).

        Use it inside ``with model.gate:``, so that ``close()`` waits for the call.
        """
        self._check_open()
        return self._handle

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._handle is None

    def _register_context(self, context: Any) -> None:
        self._contexts.add(context)

    def _register_adapter(self, adapter: LoraAdapter) -> None:
        self._adapters.add(adapter)

    def _register_dependent(self, dependent: Any) -> None:
        """A projector or chat templates that ``close()`` closes before freeing the weights."""
        self._dependents.add(dependent)

    def _lora_in_use(self, adapter: LoraAdapter) -> bool:
        """Whether an open context applies ``adapter`` (call with ``_lora_lock`` held)."""
        return any(adapter in context.lora_adapters for context in list(self._contexts))

    def load_lora(self, path: str | os.PathLike[str]) -> LoraAdapter:
        """Load a LoRA adapter (GGUF) for this model; ``LoraError`` names the path if it is unusable.

        The file is checked before llama.cpp reads it: it must exist, be GGUF, say
        ``general.type = adapter`` and ``adapter.type = lora`` and name this model's
        architecture; llama.cpp then checks every tensor against the model's shapes.
        """
        return LoraAdapter(self, path)

    def close(self) -> None:
        """Free the model (and any contexts, projectors, templates and adapters still using it).

        New calls get ``ClosedError`` at once; calls in flight are waited for, so no
        memory is freed under them.  Safe to call twice, and from several threads
        (one frees, the others wait for it).  Called from inside a call on the model
        (a callback or signal handler during it), it raises ``CloseInsideCallError``
        and changes nothing.

        If one of the model's RPC workers has gone away, its native memory is left
        allocated instead (with a warning): freeing it would need the worker, and
        ggml aborts the process when a worker does not answer.
        """
        if self._handle is None:
            return
        self._check_closable()
        with self._close_lock:
            if self._handle is None:
                return
            if self._rpc_servers and self._lost is None:
                with contextlib.suppress(RpcServerError):
                    self.check_rpc_servers()
            if self._lost is not None:
                warnings.warn(
                    f"{self._lost_reason}; not freeing model {self.path.name}'s memory (freeing it needs "
                    "that worker)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self.gate.close()  # from now on no context, projector or adapter is made from it
            for context in list(self._contexts):
                context.close()
            for dependent in list(self._dependents):
                dependent.close()
            with self._lora_lock:  # no adapter is freed by another thread meanwhile
                for adapter in list(self._adapters):
                    adapter.close()
                handle, self._handle = self._handle, None
                ffi.release(handle)
            self._release_rpc()
            _rpc_models.discard(self)

    def _check_closable(self) -> None:
        """Raise ``CloseInsideCallError`` if this thread is inside a call on the model or on its parts."""
        self.gate.check_close()
        for owner in [*self._contexts, *self._dependents]:
            owner.gate.check_close()

    def _abandon(self, lost: list[str], reason: str) -> None:
        """Make the model unusable and detach the native destructors of it, its contexts and adapters.

        The leaked buffers keep ggml's connections to all of the model's workers,
        so they stay counted as in use, and the dead ones are marked lost.
        """
        with self._lora_lock:
            if self._lost is not None or self._handle is None:
                return
            self._lost_reason = reason
            self._lost = (
                f"{reason}. Model {self.path.name} is unusable now (it had layers on {', '.join(lost)}): "
                "close it, and load it again in a new process once the worker is back"
            )
            rpc.mark_lost(lost)
            self._release_rpc.detach()
            for context in list(self._contexts):
                if context._handle is not None:
                    ffi.gc(context._handle, None)
            for adapter in list(self._adapters):
                adapter._free.detach()
            ffi.gc(self._handle, None)

    @staticmethod
    def close_those_with_lost_workers() -> None:
        """Close, leaving their memory allocated, the open models whose RPC worker has stopped.

        For interpreter exit, before anything frees a context or a model: freeing
        memory on a stopped worker makes ggml abort the process, which would turn
        a clean exit into SIGABRT.
        """
        for model in list(_rpc_models):
            if not model.closed and not model.usable:
                model.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "unusable" if self._lost else self.description
        return f"<Model {self.path.name}: {state}>"

    # -- devices ------------------------------------------------------------------
    @property
    def rpc_servers(self) -> list[str]:
        """The RPC workers this model was loaded with (``host:port``)."""
        return list(self._rpc_servers)

    def devices(self) -> list[offload.DeviceInfo]:
        """The devices layers may go to (workers' devices first, then local GPUs), then the CPU."""
        return offload.build_report(self._offload_devices, []).devices

    def offload_report(self, context_logs: Sequence[Sequence[str]] = ()) -> offload.OffloadReport:
        """Where llama.cpp put this model's layers and weights (and the buffers in ``context_logs``)."""
        self._check_open()
        return offload.build_report(self._offload_devices, self._load_log, context_logs)

    @property
    def usable(self) -> bool:
        """Whether the model is open and none of its RPC workers has stopped (checked now).

        A model whose worker stopped stays unusable, even once the worker is back:
        its layers there are gone, and ggml keeps the dead connection for the life
        of the process.  Close it and load it again in a new process.
        """
        if self._handle is None:
            return False
        if self._rpc_servers:
            with contextlib.suppress(RpcServerError):
                self.check_rpc_servers()
        return self._lost is None

    def check_rpc_servers(self, timeout: float = rpc.HANDSHAKE_TIMEOUT) -> None:
        """Raise ``RpcServerError`` if one of this model's workers no longer listens.

        ggml aborts the process when it talks to a dead worker, so call this before
        work that would (a request, ``close()``) to get an exception instead.  The
        first time a stopped worker is found, the model becomes unusable for good
        (see ``usable``) and its memory will not be freed, so that no later close,
        garbage collection or interpreter exit talks to the dead worker.
        """
        if self._lost is not None:
            raise RpcServerError(self._lost)
        if self._handle is None:
            return
        errors: list[tuple[str, RpcServerError]] = []
        for server in self._rpc_servers:
            try:
                rpc.check_alive(server, timeout)
            except RpcServerError as error:
                errors.append((server, error))
        if errors:
            self._abandon([server for server, _ in errors], str(errors[0][1]))
            raise RpcServerError(self._lost or str(errors[0][1]))  # None only if closed meanwhile

    # -- metadata -----------------------------------------------------------------
    @property
    def n_ctx_train(self) -> int:
        """Context length the model was trained with."""
        with self.gate:
            return int(lib.llama_model_n_ctx_train(self.handle))

    @property
    def n_embd(self) -> int:
        """Embedding width."""
        with self.gate:
            return int(lib.llama_model_n_embd(self.handle))

    @property
    def n_layer(self) -> int:
        """Number of layers."""
        with self.gate:
            return int(lib.llama_model_n_layer(self.handle))

    @property
    def n_params(self) -> int:
        """Number of parameters."""
        with self.gate:
            return int(lib.llama_model_n_params(self.handle))

    @property
    def size_bytes(self) -> int:
        """Total size of the weights in bytes."""
        with self.gate:
            return int(lib.llama_model_size(self.handle))

    @property
    def has_encoder(self) -> bool:
        """Whether the model has an encoder (encoder-decoder models)."""
        with self.gate:
            return bool(lib.llama_model_has_encoder(self.handle))

    @property
    def n_cls_out(self) -> int:
        """Outputs of the classifier head (one score for a reranker); meaningful for classifiers only."""
        with self.gate:
            return int(lib.llama_model_n_cls_out(self.handle))

    @property
    def description(self) -> str:
        """llama.cpp's one-line description, e.g. ``gemma3 270M Q4_K - Medium``."""
        buf = ffi.new("char[]", 256)
        with self.gate:
            lib.llama_model_desc(self.handle, buf, len(buf))
        return ffi.string(buf).decode("utf-8", "replace")

    @cached_property
    def metadata(self) -> dict[str, str]:
        """All GGUF key/value pairs, values rendered as strings by llama.cpp."""
        with self.gate:
            return read_metadata(
                self.handle,
                lib.llama_model_meta_count,
                lib.llama_model_meta_key_by_index,
                lib.llama_model_meta_val_str_by_index,
            )

    @property
    def architecture(self) -> str:
        """The ``general.architecture`` key, e.g. ``gemma3``."""
        return self.metadata.get("general.architecture", "")

    @property
    def name(self) -> str:
        """The model's ``general.name``, else its file name."""
        return self.metadata.get("general.name") or self.path.stem

    @property
    def chat_template(self) -> str | None:
        """The chat template stored in the GGUF, if any."""
        return self.named_template(None)

    def named_template(self, name: str | None) -> str | None:
        """The GGUF's template called ``name`` (``"rerank"``: a reranker's prompt), or its chat template."""
        with self.gate:
            raw = lib.llama_model_chat_template(self.handle, ffi.NULL if name is None else name.encode())
            return None if raw == ffi.NULL else ffi.string(raw).decode("utf-8", "replace")
