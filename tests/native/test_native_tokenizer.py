"""Tokenizer: text <-> token ids, special tokens, end-of-generation ids."""

from __future__ import annotations

import pytest

from llamacpp_native import Llama, TokenizeError, Vocab


@pytest.mark.parametrize(
    "text",
    [
        "hello world",
        "héllo wörld 日本語 🙂",
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines\r\n",
        "",
    ],
)
def test_detokenize_inverts_tokenize(vocab: Vocab, text: str) -> None:
    assert vocab.detokenize(vocab.tokenize(text, add_special=False)) == text


def test_non_ascii_text_round_trips_through_the_bytes_api(llama: Llama) -> None:
    text = "héllo wörld 日本語 🙂"
    tokens = llama.tokenize(text.encode("utf-8"), add_bos=False)
    assert llama.detokenize(tokens) == text.encode("utf-8")


def test_add_special_prepends_bos_and_detokenize_drops_it(vocab: Vocab) -> None:
    plain = vocab.tokenize("hello", add_special=False)
    with_bos = vocab.tokenize("hello", add_special=True)
    assert vocab.add_bos
    assert with_bos == [vocab.bos, *plain]
    assert vocab.detokenize(with_bos) == "hello"


def test_parse_special_turns_a_marker_into_its_single_special_token(vocab: Vocab) -> None:
    parsed = vocab.tokenize("<start_of_turn>", add_special=False, parse_special=True)
    assert len(parsed) == 1
    assert vocab.token_text(parsed[0]) == "<start_of_turn>"
    assert vocab.is_control(parsed[0])


def test_without_parse_special_a_marker_is_plain_text_of_several_tokens(vocab: Vocab) -> None:
    literal = vocab.tokenize("<start_of_turn>", add_special=False, parse_special=False)
    special = vocab.tokenize("<start_of_turn>", add_special=False, parse_special=True)
    assert len(literal) > 1
    assert special[0] not in literal
    assert vocab.detokenize(literal) == "<start_of_turn>"


def test_special_tokens_render_as_text_only_when_asked(vocab: Vocab) -> None:
    tokens = vocab.tokenize("<start_of_turn>user\nhi", add_special=False, parse_special=True)
    assert vocab.detokenize(tokens, special=True) == "<start_of_turn>user\nhi"
    assert vocab.detokenize(tokens, special=False) == "user\nhi"


def test_gemma_bos_eos_and_end_of_turn_ids(vocab: Vocab) -> None:
    assert vocab.token_text(vocab.bos) == "<bos>"
    assert vocab.token_text(vocab.eos) == "<eos>"
    assert vocab.token_text(vocab.eot) == "<end_of_turn>"
    assert len({vocab.bos, vocab.eos, vocab.eot}) == 3


def test_llama_token_accessors_match_the_vocabulary(llama: Llama, vocab: Vocab) -> None:
    assert llama.token_bos() == vocab.bos
    assert llama.token_eos() == vocab.eos


def test_end_of_sequence_and_end_of_turn_end_generation_but_text_does_not(vocab: Vocab) -> None:
    assert vocab.is_eog(vocab.eos)
    assert vocab.is_eog(vocab.eot)
    assert not vocab.is_eog(vocab.bos)
    assert not any(vocab.is_eog(t) for t in vocab.tokenize("ordinary text", add_special=False))


def test_every_token_id_is_inside_the_vocabulary(vocab: Vocab) -> None:
    tokens = vocab.tokenize("héllo wörld 日本語 🙂 <start_of_turn>", parse_special=True)
    assert vocab.n_tokens == 262144
    assert all(0 <= t < vocab.n_tokens for t in tokens)


def test_a_character_split_across_tokens_is_whole_again_once_joined(vocab: Vocab) -> None:
    tokens = vocab.tokenize("🙂🙂🙂 𝄞", add_special=False)
    pieces = b"".join(vocab.token_to_piece(t) for t in tokens)
    assert pieces.decode("utf-8") == "🙂🙂🙂 𝄞"


def test_non_text_input_is_a_tokenize_error(vocab: Vocab) -> None:
    with pytest.raises(TokenizeError, match="str or bytes"):
        vocab.tokenize(12345)  # type: ignore[arg-type]
