"""Writes small random LoRA adapters (GGUF) for the default model, for the LoRA tests."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

RANK = 4


@functools.cache
def base_shapes(model_path: Path) -> dict[str, tuple[int, ...]]:
    """The base model's tensor shapes, in ggml order (``ne``: input width first).

    Read once per session: GGUFReader takes seconds over a 262k-token vocabulary.
    """
    reader = gguf.GGUFReader(model_path)
    return {tensor.name: tuple(int(n) for n in tensor.shape) for tensor in reader.tensors}


def write_lora_adapter(
    path: Path,
    model_path: Path,
    *,
    seed: int,
    layers: Sequence[int] = (0, 1, 2, 3),
    targets: Sequence[str] = ("attn_q", "ffn_up"),
    strength: float = 1.0,
    alpha: float = 8.0,
    architecture: str = "gemma3",
    width_change: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """A rank-4 adapter with random ``lora_a``/``lora_b`` for ``targets`` in ``layers``.

    ``lora_a`` has ggml shape ``[n_in, r]`` and ``lora_b`` ``[r, n_out]``, as the
    base tensor ``[n_in, n_out]`` needs; ``width_change`` adds to ``n_in`` (a
    mismatched adapter).  ``extra`` overrides or adds metadata as ``(value, type)``
    pairs, or a value for a string.
    """
    shapes = base_shapes(model_path)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, architecture)
    fields: dict[str, Any] = {
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": (alpha, gguf.GGUFValueType.FLOAT32),
        "adapter.lora.task_name": f"random-{seed}",
    }
    fields.update(extra or {})
    for key, value in fields.items():
        if isinstance(value, tuple):
            writer.add_key_value(key, value[0], value[1])
        else:
            writer.add_string(key, value)
    for layer in layers:
        for target in targets:
            name = f"blk.{layer}.{target}.weight"
            n_in, n_out = shapes[name]
            n_in += width_change
            # numpy shapes are ggml's reversed
            lora_a = rng.normal(0.0, strength / np.sqrt(n_in), (RANK, n_in)).astype(np.float32)
            lora_b = rng.normal(0.0, strength, (n_out, RANK)).astype(np.float32)
            writer.add_tensor(f"{name}.lora_a", lora_a)
            writer.add_tensor(f"{name}.lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
