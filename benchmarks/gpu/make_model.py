"""Write a random-weight llama GGUF (F16) of a chosen size, for the GPU kit.

The model means nothing, but llama.cpp loads and runs it like any llama: the
speed of a decode depends only on the shapes, so it stands in for a real model
of the same size where nothing can be downloaded (the device machine has no
network).  The vocabulary comes from a vocab-only GGUF of the pinned llama.cpp
tree (``models/ggml-vocab-llama-spm.gguf``, 32000 tokens, the llama SentencePiece
tokenizer): every ``tokenizer.*`` key is copied over.

    python benchmarks/gpu/make_model.py out.gguf --layers 16 --embd 2048   # ~1.1B, 2.2 GB
    python benchmarks/gpu/make_model.py tiny.gguf --layers 2 --embd 64     # a CPU check

Weights are windows into two shared pools of Gaussian noise (views, not copies),
so a 1B model is written in seconds at about its own size in memory traffic.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    import gguf
except ImportError:  # the device may lack the package: fall back to the pinned tree's gguf-py
    _tree = os.environ.get("LLAMA_CPP_SOURCE_DIR")
    if _tree:
        sys.path.insert(0, str(Path(_tree) / "gguf-py"))
    import gguf

VOCAB_NAME = "ggml-vocab-llama-spm.gguf"
POOL_VALUES = 1 << 24  # 16 Mi values (32 MiB of F16) per pool


def find_vocab(explicit: str | None) -> Path:
    """The vocab-only GGUF: ``explicit``, else ``$LLAMA_CPP_SOURCE_DIR/models/``, else the pinned cache."""
    if explicit:
        return Path(explicit)
    candidates = []
    tree = os.environ.get("LLAMA_CPP_SOURCE_DIR")
    if tree:
        candidates.append(Path(tree) / "models" / VOCAB_NAME)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamacpp-integrations"
    candidates.extend(sorted(cache.glob(f"llama.cpp-*/models/{VOCAB_NAME}")))
    for path in candidates:
        if path.is_file():
            return path
    raise SystemExit(f"no {VOCAB_NAME} found (set LLAMA_CPP_SOURCE_DIR or pass --vocab); tried {candidates}")


def copy_tokenizer(writer: gguf.GGUFWriter, vocab: Path) -> int:
    """Copy every ``tokenizer.*`` key of ``vocab`` into ``writer``; returns the vocabulary size."""
    reader = gguf.GGUFReader(vocab)
    n_vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            values: Any = field.contents()
            writer.add_key_value(name, values, vtype, sub_type=sub)
            if name == "tokenizer.ggml.tokens":
                n_vocab = len(values)
        else:
            writer.add_key_value(name, field.contents(), vtype)
    if not n_vocab:
        raise SystemExit(f"{vocab} has no tokenizer.ggml.tokens")
    return n_vocab


class Pool:
    """Gaussian noise of one scale, in F16; ``take(shape)`` is a view of a random window of it."""

    def __init__(self, rng: np.random.Generator, scale: float, values: int = POOL_VALUES) -> None:
        self.rng = rng
        self.data = (rng.standard_normal(values, dtype=np.float32) * scale).astype(np.float16)

    def take(self, *shape: int) -> np.ndarray:
        size = int(np.prod(shape))
        if size > self.data.size:  # larger than the pool (a huge vocabulary x width): repeat it
            reps = -(-size // self.data.size)
            return np.tile(self.data, reps)[:size].reshape(shape)
        start = int(self.rng.integers(0, self.data.size - size + 1))
        return self.data[start : start + size].reshape(shape)


def write_model(
    path: Path,
    *,
    layers: int,
    embd: int,
    ff: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    ctx: int = 8192,
    vocab: Path,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the model to ``path``; returns its shape and parameter count."""
    heads = heads or max(1, embd // 64)
    kv_heads = kv_heads or heads
    if embd % heads or heads % kv_heads:
        raise SystemExit(f"--embd {embd} must divide into --heads {heads}, and those into --kv-heads")
    head_dim = embd // heads
    ff = ff or int(256 * round(embd * 8 / 3 / 256)) or 4 * embd  # llama's ~8/3 ratio, a multiple of 256
    rng = np.random.default_rng(seed)
    wide = Pool(rng, embd**-0.5)  # inputs of width n_embd
    narrow = Pool(rng, ff**-0.5)  # ffn_down's inputs, width n_ff
    small = Pool(rng, 0.02, values=1 << 20)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(f"random llama {layers}x{embd} (GPU kit)")
    writer.add_context_length(ctx)
    writer.add_embedding_length(embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    n_vocab = copy_tokenizer(writer, vocab)
    writer.add_vocab_size(n_vocab)

    ones = np.ones(embd, np.float32)
    kv_width = head_dim * kv_heads
    # numpy shapes are ggml's reversed: a weight [n_in, n_out] in ggml is (n_out, n_in) here
    writer.add_tensor("token_embd.weight", small.take(n_vocab, embd))
    for i in range(layers):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones)
        writer.add_tensor(f"{blk}.attn_q.weight", wide.take(embd, embd))
        writer.add_tensor(f"{blk}.attn_k.weight", wide.take(kv_width, embd))
        writer.add_tensor(f"{blk}.attn_v.weight", wide.take(kv_width, embd))
        writer.add_tensor(f"{blk}.attn_output.weight", wide.take(embd, embd))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones)
        writer.add_tensor(f"{blk}.ffn_gate.weight", wide.take(ff, embd))
        writer.add_tensor(f"{blk}.ffn_up.weight", wide.take(ff, embd))
        writer.add_tensor(f"{blk}.ffn_down.weight", narrow.take(embd, ff))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", wide.take(n_vocab, embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    params = n_vocab * embd * 2 + layers * (2 * embd * embd + 2 * kv_width * embd + 3 * ff * embd)
    return {"layers": layers, "embd": embd, "ff": ff, "heads": heads, "kv_heads": kv_heads,
            "vocab": n_vocab, "params": params}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path, help="GGUF file to write")
    parser.add_argument("--layers", type=int, default=16, help="transformer blocks (%(default)s)")
    parser.add_argument("--embd", type=int, default=2048, help="embedding width (%(default)s)")
    parser.add_argument("--ff", type=int, default=None, help="feed-forward width (default: ~8/3 x embd)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: embd / 64)")
    parser.add_argument("--kv-heads", type=int, default=None, help="KV heads (default: as --heads)")
    parser.add_argument(
        "--ctx", type=int, default=8192, help="training context in the metadata (%(default)s)"
    )
    parser.add_argument("--vocab", default=None, help=f"vocab-only GGUF (default: {VOCAB_NAME} of the tree)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (%(default)s)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    facts = write_model(
        args.output, layers=args.layers, embd=args.embd, ff=args.ff, heads=args.heads,
        kv_heads=args.kv_heads, ctx=args.ctx, vocab=find_vocab(args.vocab), seed=args.seed,
    )  # fmt: skip
    size = args.output.stat().st_size
    print(
        f"wrote {args.output}: {facts['params'] / 1e9:.3f}B parameters, {size / 2**20:.0f} MiB, "
        f"{facts} in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
