"""Fuzzing: random text, bytes, token ids, grammars and schemas never crash the process."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llamacpp_native import (
    GrammarError,
    GrammarSpec,
    Llama,
    SamplerChain,
    SamplingParams,
    TokenizeError,
    json_schema_to_grammar,
)

FUZZ = settings(max_examples=50, deadline=None, database=None)  # no .hypothesis/ left behind

# Every code point that UTF-8 can encode (lone surrogates cannot be; see the bad-input tests).
ENCODABLE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)

SCHEMA_KEYS = st.sampled_from(
    [
        "type",
        "properties",
        "items",
        "enum",
        "const",
        "required",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "pattern",
        "anyOf",
        "oneOf",
        "allOf",
        "additionalProperties",
        "minItems",
        "maxItems",
        "format",
        "$ref",
        "prefixItems",
        "$defs",
    ]
)
TYPE_NAMES = st.sampled_from(["string", "integer", "number", "boolean", "null", "object", "array", "unknown"])
PATTERNS = st.lists(st.sampled_from(list("^$ab.*+?()[]{}|\\-0123,")), max_size=8).map("".join)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 50),
    st.text(max_size=5),
    PATTERNS,
    TYPE_NAMES,
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
SCHEMAS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(SCHEMA_KEYS, st.text(max_size=3)), children, max_size=4),
    ),
    max_leaves=12,
)
GBNF_PIECES = st.sampled_from(
    [
        "root",
        " ::= ",
        '"a"',
        '"',
        "[",
        "]",
        "^",
        "-",
        "(",
        ")",
        "|",
        "*",
        "+",
        "?",
        "{",
        "}",
        "2",
        ",",
        "x",
        "\n",
        " ",
        "\\",
        "[a-z]",
        "r2",
        "::=",
        "#",
        ".",
        "'",
    ]
)


@FUZZ
@given(text=ENCODABLE_TEXT)
def test_any_encodable_text_round_trips_through_the_tokenizer(llama: Llama, text: str) -> None:
    vocab = llama.model.vocab
    tokens = vocab.tokenize(text, add_special=False)
    assert all(0 <= t < vocab.n_tokens for t in tokens)
    assert vocab.detokenize(tokens) == text


@FUZZ
@given(text=ENCODABLE_TEXT)
def test_parsing_special_tokens_in_any_text_never_fails(llama: Llama, text: str) -> None:
    vocab = llama.model.vocab
    tokens = vocab.tokenize("<start_of_turn>" + text + "<end_of_turn>", parse_special=True)
    assert tokens[:2] == [vocab.bos, 105]
    assert vocab.detokenize(tokens, special=True) == "<bos><start_of_turn>" + text + "<end_of_turn>"


@FUZZ
@given(data=st.binary(max_size=60))
def test_any_bytes_tokenize_and_utf8_round_trips(llama: Llama, data: bytes) -> None:
    tokens = llama.tokenize(data, add_bos=False)
    assert all(0 <= t < llama.model.vocab.n_tokens for t in tokens)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return  # llama.cpp keeps the bytes, though not always their spaces' spelling
    assert llama.detokenize(tokens) == data


@FUZZ
@given(tokens=st.lists(st.integers(0, 262143), max_size=40))
def test_any_token_ids_in_the_vocabulary_detokenize(llama: Llama, tokens: list[int]) -> None:
    assert isinstance(llama.model.vocab.detokenize(tokens, special=True), str)
    assert isinstance(llama.detokenize(tokens), bytes)


@FUZZ
@given(tokens=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=5))
def test_any_token_ids_are_detokenized_or_refused(llama: Llama, tokens: list[int]) -> None:
    try:
        llama.detokenize(tokens)
    except TokenizeError as error:
        assert "outside the vocabulary" in str(error)


@FUZZ
@given(schema=SCHEMAS)
def test_json_schema_to_grammar_returns_a_grammar_or_raises_grammar_error(llama: Llama, schema: Any) -> None:
    try:
        grammar = json_schema_to_grammar(schema)
    except GrammarError as error:
        assert str(error).startswith("cannot convert JSON schema to a grammar")
        return
    assert "root ::=" in grammar
    SamplerChain(llama.model.vocab, SamplingParams(temperature=0.0, grammar=GrammarSpec(grammar))).close()


@FUZZ
@given(body=st.lists(GBNF_PIECES, max_size=20).map("".join))
def test_any_gbnf_text_builds_a_sampler_or_raises_grammar_error(llama: Llama, body: str) -> None:
    spec = GrammarSpec("root ::= " + body)
    try:
        SamplerChain(llama.model.vocab, SamplingParams(temperature=0.0, grammar=spec)).close()
    except GrammarError as error:
        assert "invalid GBNF grammar" in str(error)
