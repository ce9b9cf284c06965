"""Tiny GGUFs for tests: rerank and fill-in-the-middle models, their numpy reference, an unknown architecture.

``write_reranker`` writes a one-block BERT cross-encoder with the classifier head llama.cpp's
rank pooling reads (``cls`` then ``cls.output``, one score) and ``bert.pooling_type`` = rank;
``reference_score`` runs the same network in numpy from the same weights, so a score from
llama.cpp can be checked against a forward pass that shares no code with it.

``write_fim_model`` writes a one-block llama whose vocabulary has FIM tokens, named by
``tokenizer.ggml.fim_*_token_id`` metadata at ids that are not 0: a prompt built from
hard-coded ids would show.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

T = gguf.GGUFValueType
NORMAL, UNKNOWN, CONTROL = 1, 2, 3
"""llama.cpp's token types (``tokenizer.ggml.token_type``)."""

WORDS = [
    "what",
    "is",
    "the",
    "capital",
    "of",
    "france",
    "paris",
    "is",
    "a",
    "city",
    "in",
    "europe",
    "cats",
    "are",
    "small",
    "animals",
    "dogs",
    "bark",
    "the",
    "sky",
    "blue",
    "green",
    "where",
    "does",
    "live",
]
"""Whole words of the reranker's vocabulary: test sentences use only these (and letters)."""

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PUNCTUATION = "?.,!"

RERANK_EMBD = 16
RERANK_FF = 32
RERANK_HEADS = 2
RERANK_CTX = 128
RERANK_EPS = 1e-12


def _wpm_vocab() -> tuple[list[str], list[int]]:
    """A WordPiece vocabulary as llama.cpp's ``bert`` tokenizer reads it: ``▁`` starts a word."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    types = [CONTROL, UNKNOWN, CONTROL, CONTROL, CONTROL]
    words = [f"\u2581{w}" for w in WORDS] + [f"\u2581{c}" for c in LETTERS + PUNCTUATION]
    pieces = list(dict.fromkeys(words)) + list(LETTERS)
    tokens += pieces
    types += [NORMAL] * len(pieces)
    return tokens, types


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + RERANK_EPS) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def reranker_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The reranker's tensors by GGUF name, in numpy's shape (ggml's reversed), float32."""
    rng = np.random.default_rng(seed)
    n_vocab = len(_wpm_vocab()[0])
    e, f = RERANK_EMBD, RERANK_FF

    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {
        "token_embd.weight": normal(n_vocab, e),
        "token_types.weight": normal(2, e, scale=0.1),
        "position_embd.weight": normal(RERANK_CTX, e, scale=0.1),
        "token_embd_norm.weight": 1.0 + normal(e, scale=0.1),
        "token_embd_norm.bias": normal(e, scale=0.1),
        "cls.weight": normal(e, e, scale=e**-0.5),
        "cls.bias": normal(e, scale=0.1),
        "cls.output.weight": normal(1, e),
        "cls.output.bias": normal(1, scale=0.1),
    }
    blk = "blk.0"
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        weights[f"{blk}.{name}.weight"] = normal(e, e, scale=e**-0.5)
        weights[f"{blk}.{name}.bias"] = normal(e, scale=0.1)
    for name in ("attn_output_norm", "layer_output_norm"):
        weights[f"{blk}.{name}.weight"] = 1.0 + normal(e, scale=0.1)
        weights[f"{blk}.{name}.bias"] = normal(e, scale=0.1)
    weights[f"{blk}.ffn_up.weight"] = normal(f, e, scale=e**-0.5)
    weights[f"{blk}.ffn_up.bias"] = normal(f, scale=0.1)
    weights[f"{blk}.ffn_down.weight"] = normal(e, f, scale=f**-0.5)
    weights[f"{blk}.ffn_down.bias"] = normal(e, scale=0.1)
    return weights


def write_reranker(
    path: Path, seed: int = 0, *, rank_pooling: bool = True, rerank_template: str | None = None
) -> Path:
    """A one-block BERT cross-encoder (width 16) with a one-score classifier head.

    ``rank_pooling=False`` leaves ``bert.pooling_type`` out: the same network, not declared a
    reranker.  ``rerank_template`` is stored as ``tokenizer.chat_template.rerank`` (the pair's
    layout, with ``{query}`` and ``{document}``).
    """
    tokens, types = _wpm_vocab()
    writer = gguf.GGUFWriter(path, "bert")
    writer.add_name("tiny random BERT reranker (tests)")
    writer.add_context_length(RERANK_CTX)
    writer.add_embedding_length(RERANK_EMBD)
    writer.add_block_count(1)
    writer.add_feed_forward_length(RERANK_FF)
    writer.add_head_count(RERANK_HEADS)
    writer.add_layer_norm_eps(RERANK_EPS)
    writer.add_causal_attention(False)
    if rank_pooling:
        writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_token_type_count(2)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(1)
    writer.add_uint32("tokenizer.ggml.cls_token_id", 2)
    writer.add_bos_token_id(2)  # llama.cpp's BERT tokenizer starts a sequence with BOS: [CLS]
    writer.add_sep_token_id(3)
    writer.add_mask_token_id(4)
    if rerank_template is not None:
        writer.add_string("tokenizer.chat_template.rerank", rerank_template)
    for name, tensor in reranker_weights(seed).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def reference_score(tokens: list[int], seed: int = 0) -> float:
    """The reranker's score for ``tokens`` (one sequence), computed in numpy from its weights.

    BERT as llama.cpp runs it: token, type-0 and position embeddings summed and normalised;
    bidirectional attention; post-norm residual blocks with a GELU feed-forward; then the
    head on the first token's state: ``cls.output(tanh(cls(h)))``.
    """
    w = {name: t.astype(np.float64) for name, t in reranker_weights(seed).items()}
    n = len(tokens)
    x = w["token_embd.weight"][tokens] + w["token_types.weight"][0] + w["position_embd.weight"][:n]
    x = _layer_norm(x, w["token_embd_norm.weight"], w["token_embd_norm.bias"])
    blk = "blk.0"

    def linear(name: str, v: np.ndarray) -> np.ndarray:
        return v @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    head = RERANK_EMBD // RERANK_HEADS
    q, k, v = (linear(f"{blk}.{m}", x).reshape(n, RERANK_HEADS, head) for m in ("attn_q", "attn_k", "attn_v"))
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    attended = np.einsum("hqk,khd->qhd", scores, v).reshape(n, RERANK_EMBD)
    x = _layer_norm(
        x + linear(f"{blk}.attn_output", attended),
        w[f"{blk}.attn_output_norm.weight"],
        w[f"{blk}.attn_output_norm.bias"],
    )
    ffn = linear(f"{blk}.ffn_down", _gelu(linear(f"{blk}.ffn_up", x)))
    x = _layer_norm(x + ffn, w[f"{blk}.layer_output_norm.weight"], w[f"{blk}.layer_output_norm.bias"])
    pooled = np.tanh(linear("cls", x[0]))
    return float(linear("cls.output", pooled)[0])


FIM_TOKENS = {
    "pre": "<PRE>",
    "suf": "<SUF>",
    "mid": "<MID>",
    "pad": "<PAD>",
    "rep": "<REPO>",
    "sep": "<FILE>",
}
"""The FIM kinds (``tokenizer.ggml.fim_<kind>_token_id``) and the text of their tokens."""


def write_fim_model(path: Path, *, with_repo_tokens: bool = True, seed: int = 0) -> dict[str, int]:
    """A one-block llama (width 32) over a byte-level vocabulary with FIM tokens; returns their ids.

    The vocabulary: ``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens, lower-case words, then the
    FIM control tokens (ids 300 and up).  ``with_repo_tokens=False`` leaves out the repository
    and file-separator tokens (the FIM layout without repository context).
    """
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [6] * 256  # 6: byte tokens
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    words = list(dict.fromkeys([f"\u2581{w}" for w in WORDS] + [f"\u2581{c}" for c in LETTERS]))
    words += list(LETTERS)
    tokens += words
    types += [NORMAL] * len(words)
    scores += [-float(len(word)) * 0.01 for word in words]
    while len(tokens) < 300:
        tokens.append(f"<unused{len(tokens)}>")
        types.append(CONTROL)
        scores.append(0.0)
    kinds = [k for k in FIM_TOKENS if with_repo_tokens or k not in ("rep", "sep")]
    ids: dict[str, int] = {}
    for kind in kinds:
        ids[kind] = len(tokens)
        tokens.append(FIM_TOKENS[kind])
        types.append(CONTROL)
        scores.append(0.0)
    n_vocab, embd, ff = len(tokens), 32, 64

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny random llama with FIM tokens (tests)")
    writer.add_context_length(512)
    writer.add_embedding_length(embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_rope_dimension_count(embd // 4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    for kind, token in ids.items():
        writer.add_uint32(f"tokenizer.ggml.fim_{kind}_token_id", token)
    writer.add_vocab_size(n_vocab)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * shape[-1] ** -0.5).astype(np.float32)

    ones = np.ones(embd, np.float32)
    writer.add_tensor("token_embd.weight", normal(n_vocab, embd))
    for name, shape in (
        ("attn_q", (embd, embd)),
        ("attn_k", (embd, embd)),
        ("attn_v", (embd, embd)),
        ("attn_output", (embd, embd)),
        ("ffn_gate", (ff, embd)),
        ("ffn_up", (ff, embd)),
        ("ffn_down", (embd, ff)),
    ):
        writer.add_tensor(f"blk.0.{name}.weight", normal(*shape))
    writer.add_tensor("blk.0.attn_norm.weight", ones)
    writer.add_tensor("blk.0.ffn_norm.weight", ones)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", normal(n_vocab, embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return ids


def alien_model(path: Path, architecture: str) -> Path:
    """A well-formed GGUF file of an architecture llama.cpp does not know (it says which in its log)."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
