"""A Context: decoding, KV-cache operations, saved state, logits and embeddings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llamacpp_native import (
    Context,
    ContextError,
    ContextOverflowError,
    Llama,
    SamplerChain,
    SamplingParams,
    TokenizeError,
    Vocab,
)

PROMPT = "1, 2, 3, 4,"


@pytest.fixture
def context(llama: Llama) -> Iterator[Context]:
    """A fresh two-sequence context on the shared model."""
    with Context(llama.model, n_ctx=128, n_seq_max=2, n_threads=1) as ctx:
        yield ctx


def greedy_continuation(context: Context, pos: int, n: int, seq_id: int = 0) -> list[int]:
    """Sample ``n`` greedy tokens after position ``pos`` of ``seq_id``, decoding each."""
    tokens: list[int] = []
    with SamplerChain(context.model.vocab, SamplingParams(temperature=0.0)) as sampler:
        for _ in range(n):
            token = sampler.sample(context)
            tokens.append(token)
            context.decode([token], pos0=pos, seq_id=seq_id)
            pos += 1
    return tokens


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def test_decode_fills_the_kv_cache_up_to_the_last_position(context: Context, vocab: Vocab) -> None:
    tokens = vocab.tokenize(PROMPT)
    assert context.kv_pos_max(0) == -1
    context.decode(tokens)
    assert context.kv_pos_max(0) == len(tokens) - 1
    assert context.kv_pos_max(1) == -1


def test_logits_cover_the_vocabulary_and_predict_the_count(context: Context, vocab: Vocab) -> None:
    context.decode(vocab.tokenize(PROMPT))
    logits = context.logits()
    assert len(logits) == vocab.n_tokens
    assert vocab.detokenize([argmax(logits)]) == " "  # " 5" is tokenised as " " + "5"


def test_kv_remove_drops_the_tail_of_one_sequence(context: Context, vocab: Vocab) -> None:
    tokens = vocab.tokenize(PROMPT)
    context.decode(tokens)
    assert context.kv_remove(0, 3, -1)
    assert context.kv_pos_max(0) == 2


def test_re_decoding_a_removed_tail_gives_the_same_prediction(context: Context, vocab: Vocab) -> None:
    tokens = vocab.tokenize(PROMPT)
    context.decode(tokens)
    before = argmax(context.logits())
    context.kv_remove(0, len(tokens) - 2, -1)
    context.decode(tokens[-2:], pos0=len(tokens) - 2)
    assert argmax(context.logits()) == before


def test_kv_copy_shares_a_prefix_with_another_sequence(context: Context, vocab: Vocab) -> None:
    tokens = vocab.tokenize(PROMPT)
    context.decode(tokens[:-1])
    context.kv_copy(0, 1)
    assert context.kv_pos_max(1) == len(tokens) - 2
    context.decode(tokens[-1:], pos0=len(tokens) - 1, seq_id=0)
    from_seq0 = argmax(context.logits())
    context.decode(tokens[-1:], pos0=len(tokens) - 1, seq_id=1)
    assert argmax(context.logits()) == from_seq0


def test_kv_keep_forgets_every_other_sequence(context: Context, vocab: Vocab) -> None:
    tokens = vocab.tokenize(PROMPT)
    context.decode(tokens, seq_id=0)
    context.decode(tokens, seq_id=1)
    context.kv_keep(1)
    assert context.kv_pos_max(0) == -1
    assert context.kv_pos_max(1) == len(tokens) - 1


def test_kv_clear_empties_every_sequence(context: Context, vocab: Vocab) -> None:
    tokens = vocab.tokenize(PROMPT)
    context.decode(tokens, seq_id=0)
    context.decode(tokens, seq_id=1)
    context.kv_clear()
    assert context.kv_pos_max(0) == -1
    assert context.kv_pos_max(1) == -1


def test_restoring_a_saved_state_gives_the_same_greedy_continuation(context: Context, vocab: Vocab) -> None:
    tokens = vocab.tokenize(PROMPT)
    context.decode(tokens)
    state = context.save_state()
    first = greedy_continuation(context, len(tokens), 6)
    context.kv_clear()
    context.load_state(state)
    assert context.kv_pos_max(0) == len(tokens) - 1
    assert greedy_continuation(context, len(tokens), 6) == first
    assert vocab.detokenize(first).startswith(" 5, 6")


def test_a_sequence_state_can_be_restored_into_another_sequence(context: Context, vocab: Vocab) -> None:
    tokens = vocab.tokenize(PROMPT)
    context.decode(tokens[:-1], seq_id=0)
    state = context.save_state(seq_id=0)
    context.load_state(state, seq_id=1)
    assert context.kv_pos_max(1) == len(tokens) - 2
    context.decode(tokens[-1:], pos0=len(tokens) - 1, seq_id=1)
    assert vocab.detokenize(greedy_continuation(context, len(tokens), 4, seq_id=1)) == " 5, "


@pytest.mark.parametrize("state", [b"", b"\x04\x00\x00\x00junk and more junk"], ids=["empty", "foreign"])
def test_a_state_that_is_not_this_models_is_a_context_error(context: Context, state: bytes) -> None:
    with pytest.raises(ContextError, match="could not be restored"):
        context.load_state(state)


def test_decoding_past_the_window_is_an_overflow_naming_both_sizes(context: Context) -> None:
    too_many = context.n_ctx + 2
    with pytest.raises(ContextOverflowError, match=rf"{too_many} tokens .* {context.n_ctx} tokens"):
        context.decode([2] * too_many)
    assert context.kv_pos_max(0) == -1


def test_decoding_tokens_outside_the_vocabulary_is_a_tokenize_error(context: Context, vocab: Vocab) -> None:
    with pytest.raises(TokenizeError, match="outside the vocabulary"):
        context.decode([2, vocab.n_tokens])
    assert context.kv_pos_max(0) == -1


def test_perf_counts_a_decoded_prompt_as_prompt_tokens(context: Context, vocab: Vocab) -> None:
    tokens = vocab.tokenize(PROMPT)
    context.decode(tokens)
    greedy_continuation(context, len(tokens), 2)  # llama.cpp books a decode when the next one starts
    perf = context.perf()
    assert perf["prompt_tokens"] == len(tokens)
    assert perf["eval_tokens"] >= 1
    assert perf["prompt_ms"] > 0


def test_an_embedding_context_gives_one_n_embd_vector_per_sequence(llama: Llama, vocab: Vocab) -> None:
    with Context(llama.model, n_ctx=128, n_seq_max=2, embeddings=True, pooling="mean", n_threads=1) as ctx:
        ctx.decode_many([(vocab.tokenize("a cat"), 0, 0), (vocab.tokenize("quantum physics"), 0, 1)])
        first, second = ctx.embedding(0), ctx.embedding(1)
    assert len(first) == len(second) == llama.model.n_embd
    assert first != second


def test_embeddings_need_a_context_made_for_them(context: Context) -> None:
    with pytest.raises(ContextError, match="embeddings=True"):
        context.embedding(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_ctx": -1}, "n_ctx must be >= 0"),
        ({"n_batch": 0}, "n_batch must be a positive integer"),
        ({"n_seq_max": 0}, "n_seq_max must be a positive integer"),
        ({"type_k": "q3_banana"}, "unknown KV cache type"),
        ({"pooling": "median"}, "pooling must be one of"),
        ({"flash_attn": "yes"}, "flash_attn must be True, False or None"),
    ],
)
def test_invalid_context_settings_are_context_errors(
    llama: Llama, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ContextError, match=message):
        Context(llama.model, **kwargs)  # type: ignore[arg-type]
