"""Invalid schemas and grammars fail with ``GrammarError`` before anything is decoded.

The error says what is wrong, and the shared model stays usable afterwards.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llamacpp_integrations.schema import schema_to_grammar
from llamacpp_native import GrammarError, Llama, LlamaGrammar

Complete = Callable[..., dict[str, Any]]

# (id, schema-like input, words the error must contain)
INVALID_SCHEMAS: list[tuple[str, Any, list[str]]] = [
    ("type-not-a-string", {"type": 12}, ["invalid JSON schema", "12", "type"]),
    ("unknown-type", {"type": "str"}, ["invalid JSON schema", "'str'"]),
    ("missing-ref", {"$ref": "#/$defs/missing"}, ["cannot resolve $ref #/$defs/missing"]),
    ("remote-ref", {"$ref": "https://example.com/s.json"}, ["unsupported $ref", "same document"]),
    (
        "not-serialisable",
        {"type": "object", "properties": {"on": {"type": "string", "default": datetime.date.today()}}},
        ["not JSON-serialisable", "date"],
    ),
    ("enum-as-set", {"enum": {1, 2}}, ["invalid JSON schema", "not of type 'array'", "enum"]),
    ("negative-maxLength", {"type": "string", "maxLength": -1}, ["invalid JSON schema", "maxLength"]),
    ("minItems-as-string", {"type": "array", "minItems": "2"}, ["invalid JSON schema", "minItems"]),
    ("invalid-regex", {"type": "string", "pattern": "^(ab$"}, ["invalid JSON schema", "regex"]),
    ("properties-not-object", {"properties": []}, ["invalid JSON schema", "properties"]),
    ("not-a-schema", 42, ["cannot derive a JSON schema", "pydantic model"]),
]


@pytest.fixture
def no_decoding(llama: Llama, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record any decode on the shared engine (there must be none)."""
    calls: list[str] = []
    engine = llama.engine

    def spy(name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(engine, "_decode", spy("decode", engine._decode))
    yield calls


def _assert_usable(complete: Complete) -> None:
    result = complete("The capital of France is", max_tokens=4, temperature=0.0)
    assert result["usage"]["completion_tokens"] > 0 and result["choices"][0]["text"].strip()


@pytest.mark.parametrize(
    ("source", "words"), [c[1:] for c in INVALID_SCHEMAS], ids=[c[0] for c in INVALID_SCHEMAS]
)
def test_invalid_schema_raises_grammar_error_with_the_reason(source: Any, words: list[str]) -> None:
    with pytest.raises(GrammarError) as caught:
        schema_to_grammar(source)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": 12}, "type must be a string"),
        ({"$ref": "#/$defs/missing"}, "cannot resolve $ref #/$defs/missing"),
        (
            {"type": "object", "properties": {"x": {"type": "integer", "default": object()}}},
            "not JSON-serialisable",
        ),
    ],
    ids=["type-not-a-string", "missing-ref", "not-serialisable"],
)
def test_chat_response_format_rejects_invalid_schema_before_decoding(
    llama: Llama, no_decoding: list[str], schema: dict[str, Any], reason: str
) -> None:
    with pytest.raises(GrammarError, match=reason.replace("$", r"\$")):
        llama.create_chat_completion(
            [{"role": "user", "content": "Hi"}],
            max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"schema": schema}},
        )
    assert no_decoding == []


@pytest.mark.parametrize(
    "grammar",
    [
        "root ::= (",
        "root ::= foo",
        'root ::= "a" [',
        'item ::= "a"',
    ],
    ids=["unclosed-group", "undefined-rule", "unclosed-class", "no-root"],
)
def test_invalid_gbnf_raises_before_decoding_and_the_model_stays_usable(
    complete: Complete, no_decoding: list[str], grammar: str
) -> None:
    with pytest.raises(GrammarError, match="invalid GBNF grammar"):
        complete("Say yes:", grammar=grammar, max_tokens=8, temperature=0.0)
    assert no_decoding == []
    _assert_usable(complete)
    constrained = complete("Say yes:", grammar='root ::= " yes" | " no"', max_tokens=4, temperature=0.0)
    assert constrained["choices"][0]["text"] in (" yes", " no")


def test_missing_root_error_names_the_root_rule(complete: Complete) -> None:
    with pytest.raises(GrammarError, match="root"):
        complete("Hi", grammar='item ::= "a"', max_tokens=2)


@pytest.mark.parametrize(
    ("grammar", "reason"),
    [
        ("root ::= (", r"expecting '\)' at the end of the grammar \(line 1, column 1"),
        ("root ::= foo", "Undefined rule identifier 'foo'"),
    ],
    ids=["unclosed-group", "undefined-rule"],
)
def test_invalid_gbnf_error_gives_the_parser_reason(complete: Complete, grammar: str, reason: str) -> None:
    """llama.cpp's parser prints its reason to stderr; the shim checks the grammar and returns it."""
    with pytest.raises(GrammarError, match=reason):
        complete("Hi", grammar=grammar, max_tokens=2)


def test_empty_grammar_is_rejected() -> None:
    with pytest.raises(GrammarError, match="empty"):
        LlamaGrammar.from_string("  \n")


def test_missing_grammar_file_lists_the_bundled_ones() -> None:
    with pytest.raises(GrammarError, match=r"not found.*\['json', 'list'\]"):
        LlamaGrammar.from_file("no-such-grammar")
