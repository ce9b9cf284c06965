"""Which devices exist and where a model's layers and buffers went.

llama.cpp decides placement while it loads (layers) and while it creates a
context (KV cache, compute buffers) and reports it only in its log; the
``Model`` and ``Llama`` classes capture those lines (``capture_log``) and this
module reads them.  The same lines are written for every backend (CPU, CUDA,
Metal, RPC...), so the report reads the same everywhere.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llamacpp_native.binding._library import ensure_backend, ffi, lib
from llamacpp_native.binding.rpc import endpoint_of

_KINDS = {
    int(lib.GGML_BACKEND_DEVICE_TYPE_CPU): "cpu",
    int(lib.GGML_BACKEND_DEVICE_TYPE_GPU): "gpu",
    int(lib.GGML_BACKEND_DEVICE_TYPE_IGPU): "igpu",
    int(lib.GGML_BACKEND_DEVICE_TYPE_ACCEL): "accel",
}
_LAYER = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_BUFFER = re.compile(r":\s+(\S+)\s+(model|KV|compute|output|RS|LoRA) buffer size\s*=\s*([\d.]+) MiB")


@dataclass(frozen=True)
class DeviceInfo:
    """One ggml device: ``kind`` is cpu, gpu, igpu, accel or rpc (a worker's device, at ``endpoint``)."""

    name: str
    description: str
    kind: str
    backend: str
    endpoint: str | None = None
    memory_total: int | None = None
    memory_free: int | None = None


def describe(device: Any) -> DeviceInfo:
    """A ggml device as ``DeviceInfo``.  An RPC device's memory is not asked for (that is a network call)."""
    endpoint = endpoint_of(device)
    total = free = None
    if endpoint is None:
        free_p, total_p = ffi.new("size_t *"), ffi.new("size_t *")
        lib.ggml_backend_dev_memory(device, free_p, total_p)
        total, free = int(total_p[0]), int(free_p[0])
    return DeviceInfo(
        name=ffi.string(lib.ggml_backend_dev_name(device)).decode(),
        description=ffi.string(lib.ggml_backend_dev_description(device)).decode(),
        kind="rpc" if endpoint is not None else _KINDS.get(int(lib.ggml_backend_dev_type(device)), "other"),
        backend=ffi.string(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(device))).decode(),
        endpoint=endpoint,
        memory_total=total,
        memory_free=free,
    )


def local_devices() -> list[Any]:
    """Every device this build registered on this machine (the CPU, GPUs where compiled in)."""
    ensure_backend()
    return [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]


def local_offload_devices() -> list[Any]:
    """The local devices llama.cpp offloads layers to: the GPUs, else integrated GPUs (its own rule)."""
    kinds = {d: int(lib.ggml_backend_dev_type(d)) for d in local_devices()}
    gpus = [d for d, k in kinds.items() if k == lib.GGML_BACKEND_DEVICE_TYPE_GPU]
    return gpus or [d for d, k in kinds.items() if k == lib.GGML_BACKEND_DEVICE_TYPE_IGPU]


@dataclass(frozen=True)
class BufferInfo:
    """One buffer llama.cpp allocated: ``kind`` is model, KV, compute, output, RS or LoRA."""

    kind: str
    buffer: str
    mib: float


@dataclass
class OffloadReport:
    """Where a model's layers and buffers went, as llama.cpp reported while loading.

    ``layer_devices[i]`` is the device of layer ``i`` (the last entry is the output
    layer); ``layers`` counts them per device; ``devices`` describes the devices
    the model may use (its offload devices, then the CPU); ``buffers`` lists the
    weights' buffers and, once a context exists, its KV cache and compute buffers.
    """

    devices: list[DeviceInfo]
    layer_devices: list[str]
    offloaded: tuple[int, int] | None
    buffers: list[BufferInfo] = field(default_factory=list)

    @property
    def layers(self) -> dict[str, int]:
        """Number of layers on each device."""
        return dict(Counter(self.layer_devices))

    def buffer_mib(self, kind: str | None = None) -> dict[str, float]:
        """MiB per buffer name (``CPU``, ``CUDA0``, ``RPC0[host:port]``...), of one ``kind`` or all."""
        totals: dict[str, float] = {}
        for buf in self.buffers:
            if kind is None or buf.kind == kind:
                totals[buf.buffer] = totals.get(buf.buffer, 0.0) + buf.mib
        return totals

    def __str__(self) -> str:
        lines = []
        if self.offloaded is not None:
            lines.append(f"offloaded {self.offloaded[0]}/{self.offloaded[1]} layers")
        for info in self.devices:
            where = f" at {info.endpoint}" if info.endpoint else ""
            memory = f", {info.memory_total // 2**20} MiB" if info.memory_total else ""
            count = self.layers.get(info.name, 0)
            lines.append(f"{info.name} ({info.kind}{where}{memory}): {count} layers")
        for buf in self.buffers:
            lines.append(f"  {buf.kind:8s} {buf.buffer:28s} {buf.mib:10.2f} MiB")
        return "\n".join(lines)


def parse_placement(lines: Iterable[str]) -> tuple[list[str], tuple[int, int] | None, list[BufferInfo]]:
    """Layer devices, the offloaded count and the buffers, from llama.cpp's log lines."""
    layers: dict[int, str] = {}
    offloaded = None
    buffers = []
    for line in lines:
        if match := _LAYER.search(line):
            layers[int(match.group(1))] = match.group(2)
        elif match := _OFFLOADED.search(line):
            offloaded = (int(match.group(1)), int(match.group(2)))
        elif match := _BUFFER.search(line):
            buffers.append(BufferInfo(match.group(2), match.group(1), float(match.group(3))))
    return [layers[i] for i in sorted(layers)], offloaded, buffers


def build_report(
    devices: Sequence[Any], load_log: Sequence[str], context_logs: Iterable[Sequence[str]] = ()
) -> OffloadReport:
    """An ``OffloadReport`` from a model's devices and the log of its load (and its contexts')."""
    layer_devices, offloaded, buffers = parse_placement(load_log)
    for log in context_logs:
        buffers.extend(parse_placement(log)[2])
    cpu = int(lib.GGML_BACKEND_DEVICE_TYPE_CPU)
    cpus = [d for d in local_devices() if int(lib.ggml_backend_dev_type(d)) == cpu]
    return OffloadReport([describe(d) for d in [*devices, *cpus]], layer_devices, offloaded, buffers)
