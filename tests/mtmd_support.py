"""A tiny random-weight ``gemma3`` vision projector (mmproj GGUF) and tiny images, for the multimodal tests.

No vision GGUF is on the package registry, so the tests write their own: a
SigLIP-style encoder of one block (16x16 images, 4x4 patches, width 32) whose
projection ends at 640, the embedding width of the default Gemma 3 270M.  Its
output means nothing, but every step is real: llama.cpp loads it, preprocesses
an image, encodes it, and the embeddings are decoded into the text model's
context before generation.  The keys and tensors are those that
``tools/mtmd/clip.cpp`` reads for ``PROJECTOR_TYPE_GEMMA3``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

IMAGE_SIZE = 16
PATCH_SIZE = 4
WIDTH = 32
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2
"""Image embeddings per picture: 16 patches, pooled by a scale factor of 1."""


def write_test_projector(
    path: Path,
    *,
    n_embd_out: int = 640,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    drop_keys: Sequence[str] = (),
    drop_tensors: Sequence[str] = (),
) -> Path:
    """Write the projector to ``path``; ``n_embd_out`` is the text model's width it pairs with.

    ``overrides`` replaces or adds metadata as ``(value, GGUFValueType)`` pairs
    (or plain strings), ``drop_keys`` / ``drop_tensors`` leave entries out: the
    ways a broken file is made for the bad-input tests.
    """
    rng = np.random.default_rng(seed)
    n_ff = 2 * WIDTH
    n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    T = gguf.GGUFValueType
    fields: dict[str, Any] = {
        "clip.has_vision_encoder": (True, T.BOOL),
        "clip.projector_type": "gemma3",
        "clip.use_gelu": (True, T.BOOL),
        "clip.vision.image_size": (IMAGE_SIZE, T.UINT32),
        "clip.vision.patch_size": (PATCH_SIZE, T.UINT32),
        "clip.vision.embedding_length": (WIDTH, T.UINT32),
        "clip.vision.feed_forward_length": (n_ff, T.UINT32),
        "clip.vision.block_count": (1, T.UINT32),
        "clip.vision.attention.head_count": (2, T.UINT32),
        "clip.vision.projection_dim": (n_embd_out, T.UINT32),
        "clip.vision.attention.layer_norm_epsilon": (1e-6, T.FLOAT32),
        "clip.vision.image_mean": ([0.5, 0.5, 0.5], T.ARRAY),
        "clip.vision.image_std": ([0.5, 0.5, 0.5], T.ARRAY),
        "clip.vision.projector.scale_factor": (1, T.UINT32),
    }
    fields.update(overrides or {})
    writer = gguf.GGUFWriter(path, "clip")
    writer.add_name("tiny random gemma3 projector (tests)")
    for key, value in fields.items():
        if key in drop_keys:
            continue
        if isinstance(value, tuple):
            if value[1] == T.ARRAY:
                writer.add_array(key, value[0])
            else:
                writer.add_key_value(key, value[0], value[1])
        else:
            writer.add_string(key, value)

    normal = _normal(rng)
    w = WIDTH
    tensors = {
        "v.patch_embd.weight": normal(w, 3, PATCH_SIZE, PATCH_SIZE, scale=0.5).astype(np.float16),
        "v.patch_embd.bias": normal(w, scale=0.1),
        "v.position_embd.weight": normal(n_patches, w, scale=0.1),
        **_block("v.blk.0", normal, key_bias=True),
        "v.post_ln.weight": np.ones(w, np.float32),
        "v.post_ln.bias": np.zeros(w, np.float32),
        "mm.soft_emb_norm.weight": np.ones(w, np.float32),
        "mm.input_projection.weight": normal(w, n_embd_out, scale=w**-0.5),
    }
    _finish(writer, tensors, drop_tensors)
    return path


Normal = Callable[..., np.ndarray]
"""``normal(*shape, scale=...)``: float32 Gaussian noise of a numpy shape (ggml's reversed)."""


def _normal(rng: np.random.Generator) -> Normal:
    def normal(*shape: int, scale: float) -> np.ndarray:
        return rng.normal(0.0, scale, shape).astype(np.float32)

    return normal


def _block(prefix: str, normal: Normal, *, key_bias: bool) -> dict[str, np.ndarray]:
    """One pre-norm transformer block of width ``WIDTH``, as clip.cpp names its tensors.

    numpy shapes are ggml's reversed: a weight of ggml shape [n_in, n_out] is (n_out, n_in).
    """
    w, n_ff = WIDTH, 2 * WIDTH
    tensors = {f"{prefix}.ln1.weight": np.ones(w, np.float32), f"{prefix}.ln1.bias": np.zeros(w, np.float32)}
    for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
        tensors[f"{prefix}.{name}.weight"] = normal(w, w, scale=w**-0.5)
        if name != "attn_k" or key_bias:  # Whisper's key projection has no bias
            tensors[f"{prefix}.{name}.bias"] = np.zeros(w, np.float32)
    return {
        **tensors,
        f"{prefix}.ln2.weight": np.ones(w, np.float32),
        f"{prefix}.ln2.bias": np.zeros(w, np.float32),
        f"{prefix}.ffn_up.weight": normal(n_ff, w, scale=w**-0.5),
        f"{prefix}.ffn_up.bias": np.zeros(n_ff, np.float32),
        f"{prefix}.ffn_down.weight": normal(w, n_ff, scale=n_ff**-0.5),
        f"{prefix}.ffn_down.bias": np.zeros(w, np.float32),
    }


def _finish(writer: gguf.GGUFWriter, tensors: Mapping[str, np.ndarray], drop: Sequence[str] = ()) -> None:
    """Add ``tensors`` (but ``drop``), write the file and close it."""
    for name, data in tensors.items():
        if name not in drop:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def png_bytes(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG of ``width`` x ``height`` pixels (``rgb``: rows of R, G, B bytes)."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"expected {width * height * 3} bytes of RGB, got {len(rgb)}")
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def solid_rgb(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    """Raw RGB bytes of one colour."""
    return bytes(color) * (width * height)


def noise_rgb(width: int, height: int, seed: int) -> bytes:
    """Raw RGB bytes of seeded noise (a picture unlike any other seed's)."""
    return np.random.default_rng(seed).integers(0, 256, width * height * 3, dtype=np.uint8).tobytes()


def solid_png(color: tuple[int, int, int], size: int = IMAGE_SIZE) -> bytes:
    """A square PNG of one colour."""
    return png_bytes(size, size, solid_rgb(size, size, color))


def noise_png(seed: int, size: int = IMAGE_SIZE) -> bytes:
    """A square PNG of seeded noise."""
    return png_bytes(size, size, noise_rgb(size, size, seed))


AUDIO_MEL_BINS = 16
AUDIO_STACK = 4


def write_test_audio_projector(path: Path, *, n_embd_out: int = 640, seed: int = 0) -> Path:
    """A tiny random-weight ``ultravox`` audio projector (a one-block Whisper encoder, width 32).

    llama.cpp turns the clip into a 16-bin log-mel spectrogram at 16 kHz, in
    30-second chunks; the encoder and the Ultravox projector (frames stacked by 4,
    SwiGLU) map each chunk to 375 embeddings of width ``n_embd_out``.
    """
    rng = np.random.default_rng(seed)
    w, n_ff, hidden = WIDTH, 2 * WIDTH, 2 * WIDTH
    stacked = w * AUDIO_STACK
    n_positions = 1500  # a 3000-frame chunk after the stride-2 convolution
    T = gguf.GGUFValueType
    writer = gguf.GGUFWriter(path, "clip")
    writer.add_name("tiny random ultravox projector (tests)")
    writer.add_key_value("clip.has_audio_encoder", True, T.BOOL)
    writer.add_string("clip.projector_type", "ultravox")
    for key, value in {
        "embedding_length": w,
        "feed_forward_length": n_ff,
        "block_count": 1,
        "attention.head_count": 2,
        "projection_dim": n_embd_out,
        "num_mel_bins": AUDIO_MEL_BINS,
        "projector.stack_factor": AUDIO_STACK,
    }.items():
        writer.add_key_value(f"clip.audio.{key}", value, T.UINT32)
    writer.add_key_value("clip.audio.attention.layer_norm_epsilon", 1e-5, T.FLOAT32)

    normal = _normal(rng)
    tensors = {
        # ggml conv1d kernels [K, C_in, C_out]; biases [1, C_out]
        "a.conv1d.1.weight": normal(w, AUDIO_MEL_BINS, 3, scale=0.3).astype(np.float16),
        "a.conv1d.1.bias": normal(w, 1, scale=0.1),
        "a.conv1d.2.weight": normal(w, w, 3, scale=0.2).astype(np.float16),
        "a.conv1d.2.bias": normal(w, 1, scale=0.1),
        "a.position_embd.weight": normal(n_positions, w, scale=0.1),
        **_block("a.blk.0", normal, key_bias=False),
        "mm.a.norm_pre.weight": np.ones(stacked, np.float32),
        "mm.a.mlp.1.weight": normal(2 * hidden, stacked, scale=stacked**-0.5),
        "mm.a.norm_mid.weight": np.ones(hidden, np.float32),
        "mm.a.mlp.2.weight": normal(n_embd_out, hidden, scale=hidden**-0.5),
    }
    _finish(writer, tensors)
    return path


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV file of ``samples`` (floats in [-1, 1])."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    header = struct.pack("<4sI4s", b"RIFF", 36 + len(pcm), b"WAVE")
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + fmt + struct.pack("<4sI", b"data", len(pcm)) + pcm


def tone(frequency: float, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    """A sine tone as float samples."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
