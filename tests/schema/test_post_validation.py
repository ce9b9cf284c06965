"""What the grammar enforces, and what ``parse_and_validate`` must catch after generation.

llama.cpp's converter, with this package's additions (number bounds, property counts,
\\d in patterns, unanchored patterns...), turns a JSON schema into GBNF.  Some keywords
change the grammar (enforced during decoding); others leave it exactly as without them
(not enforced).  Here each is pinned to its actual behaviour by comparing grammars, each
keyword the grammar ignores is listed by ``unenforced`` (and refused by ``strict=True``),
and shown to be caught after generation with a message naming the rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from llamacpp_integrations.schema import parse_and_validate, schema_to_grammar, unenforced
from llamacpp_native import GrammarError, SchemaValidationError

Complete = Callable[..., dict[str, Any]]

# (id, schema without the keyword, the same schema with it)
ENFORCED: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("integer-minimum", {"type": "integer"}, {"type": "integer", "minimum": 0}),
    ("integer-maximum", {"type": "integer"}, {"type": "integer", "maximum": 99}),
    ("integer-exclusiveMinimum", {"type": "integer"}, {"type": "integer", "exclusiveMinimum": 0}),
    ("integer-exclusiveMaximum", {"type": "integer"}, {"type": "integer", "exclusiveMaximum": 100}),
    ("integer-fractional-bounds", {"type": "integer"}, {"type": "integer", "minimum": 0.5, "maximum": 9.5}),
    ("number-minimum", {"type": "number"}, {"type": "number", "minimum": 0}),
    ("number-maximum", {"type": "number"}, {"type": "number", "maximum": 1}),
    ("number-exclusiveMinimum", {"type": "number"}, {"type": "number", "exclusiveMinimum": 0}),
    ("number-exclusiveMaximum", {"type": "number"}, {"type": "number", "exclusiveMaximum": 1.5}),
    ("nullable-number-bounds", {"type": ["number", "null"]}, {"type": ["number", "null"], "minimum": 0}),
    ("unanchored-pattern", {"type": "string"}, {"type": "string", "pattern": "[0-9]{3}"}),
    ("backslash-d-pattern", {"type": "string"}, {"type": "string", "pattern": "^\\d{3}$"}),
    (
        "maxProperties-listed-keys",
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "maxProperties": 1,
        },
    ),
    (
        "minProperties-listed-keys",
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "minProperties": 1,
        },
    ),
    (
        "closed-tuple-in-object",
        {"type": "object", "properties": {"t": {"type": "array"}}},
        {
            "type": "object",
            "properties": {"t": {"type": "array", "prefixItems": [{"type": "string"}], "items": False}},
        },
    ),
    ("string-minLength", {"type": "string"}, {"type": "string", "minLength": 2}),
    ("string-maxLength", {"type": "string"}, {"type": "string", "maxLength": 8}),
    ("anchored-pattern", {"type": "string"}, {"type": "string", "pattern": "^[a-z]{2,4}$"}),
    ("format-date", {"type": "string"}, {"type": "string", "format": "date"}),
    ("format-time", {"type": "string"}, {"type": "string", "format": "time"}),
    ("format-date-time", {"type": "string"}, {"type": "string", "format": "date-time"}),
    ("format-uuid", {"type": "string"}, {"type": "string", "format": "uuid"}),
    (
        "minItems",
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "integer"}, "minItems": 1},
    ),
    (
        "maxItems",
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
    ),
    (
        "prefixItems",
        {"type": "array"},
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
    ),
    ("enum", {"type": "string"}, {"type": "string", "enum": ["a", "b"]}),
    ("const", {"type": "string"}, {"type": "string", "const": "a"}),
    (
        "required",
        {"type": "object", "properties": {"a": {"type": "integer"}}},
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
    ),
]

NOT_ENFORCED: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("integer-multipleOf", {"type": "integer"}, {"type": "integer", "multipleOf": 5}),
    ("number-multipleOf", {"type": "number"}, {"type": "number", "multipleOf": 0.5}),
    (
        "uniqueItems",
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    ),
    (
        "contains",
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "integer"}, "contains": {"const": 7}},
    ),
    ("not", {}, {"not": {"type": "string"}}),
    ("minProperties", {"type": "object"}, {"type": "object", "minProperties": 1}),
    ("maxProperties", {"type": "object"}, {"type": "object", "maxProperties": 2}),
    ("propertyNames", {"type": "object"}, {"type": "object", "propertyNames": {"maxLength": 3}}),
    (
        "dependentRequired",
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "dependentRequired": {"a": ["b"]},
        },
    ),
    ("lookahead-pattern", {"type": "string"}, {"type": "string", "pattern": "^(?!a)[a-z]+$"}),
    ("format-email", {"type": "string"}, {"type": "string", "format": "email"}),
    (
        "oneOf-exclusivity",
        {"anyOf": [{"type": "integer"}, {"type": "number"}]},
        {"oneOf": [{"type": "integer"}, {"type": "number"}]},
    ),
]

# Closed by default: with "properties" and no "additionalProperties", extra keys are
# already excluded, so additionalProperties: false changes nothing (stricter than JSON Schema).
SAME_LANGUAGE = (
    {"type": "object", "properties": {"a": {"type": "integer"}}},
    {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
)


_RULE = re.compile(r"^([A-Za-z0-9-]+) ::= (.*)$")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def grammar_of(schema: dict[str, Any]) -> dict[str, str]:
    """The converter's grammar as {rule: body}, with alias rules (``a ::= b``) inlined and
    rules unreachable from root dropped, so that equal languages compare equal."""
    rules = {m[1]: m[2] for m in map(_RULE.match, schema_to_grammar(schema).splitlines()) if m}
    for name, body in rules.items():
        while body in rules:
            body = rules[body]
        rules[name] = body
    reachable, todo = set(), ["root"]
    while todo:
        name = todo.pop()
        if name not in reachable:
            reachable.add(name)
            body = re.sub(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]', " ", rules[name])  # literals, classes
            todo.extend(n for n in _NAME.findall(body) if n in rules)
    return {name: rules[name] for name in sorted(reachable)}


@pytest.mark.parametrize(("plain", "constrained"), [c[1:] for c in ENFORCED], ids=[c[0] for c in ENFORCED])
def test_converter_enforces(plain: dict[str, Any], constrained: dict[str, Any]) -> None:
    assert grammar_of(constrained) != grammar_of(plain)


@pytest.mark.parametrize(
    ("plain", "constrained"), [c[1:] for c in NOT_ENFORCED], ids=[c[0] for c in NOT_ENFORCED]
)
def test_converter_ignores(plain: dict[str, Any], constrained: dict[str, Any]) -> None:
    """The keyword leaves the grammar unchanged: only validation after generation can catch it."""
    assert grammar_of(constrained) == grammar_of(plain)


def test_additional_properties_false_is_already_the_default() -> None:
    assert grammar_of(SAME_LANGUAGE[1]) == grammar_of(SAME_LANGUAGE[0])
    assert unenforced(SAME_LANGUAGE[1]) == []


@pytest.mark.parametrize(
    ("plain", "constrained"), [c[1:] for c in NOT_ENFORCED], ids=[c[0] for c in NOT_ENFORCED]
)
def test_unenforced_lists_what_the_grammar_ignores(
    plain: dict[str, Any], constrained: dict[str, Any]
) -> None:
    assert unenforced(plain) == []
    listed = unenforced(constrained)
    assert len(listed) == 1, listed
    with pytest.raises(GrammarError, match="strict=True.*" + re.escape(listed[0].split(" ")[0])):
        schema_to_grammar(constrained, strict=True)


@pytest.mark.parametrize(("plain", "constrained"), [c[1:] for c in ENFORCED], ids=[c[0] for c in ENFORCED])
def test_strict_accepts_what_the_grammar_enforces(plain: dict[str, Any], constrained: dict[str, Any]) -> None:
    assert unenforced(constrained) == []
    assert schema_to_grammar(constrained, strict=True) == schema_to_grammar(constrained)


# (id, schema, JSON the grammar admits but the schema rejects, valid JSON, rule named in the error)
CAUGHT_AFTER: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("number-minimum", {"type": "number", "minimum": 0}, "-0.5", "0.5", "minimum"),
    ("number-maximum", {"type": "number", "maximum": 1}, "1.5", "1", "maximum"),
    ("number-exclusiveMinimum", {"type": "number", "exclusiveMinimum": 0}, "0", "0.1", "exclusiveMinimum"),
    ("integer-multipleOf", {"type": "integer", "multipleOf": 5}, "12", "15", "multipleOf"),
    ("number-multipleOf", {"type": "number", "multipleOf": 0.5}, "0.3", "1.5", "multipleOf"),
    (
        "uniqueItems",
        {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
        "[1, 2, 1]",
        "[1, 2]",
        "uniqueItems",
    ),
    (
        "contains",
        {"type": "array", "items": {"type": "integer"}, "contains": {"const": 7}},
        "[1]",
        "[1, 7]",
        "contains",
    ),
    ("not", {"not": {"type": "string"}}, '"text"', "1", "not"),
    ("minProperties", {"type": "object", "minProperties": 1}, "{}", '{"a": 1}', "minProperties"),
    (
        "maxProperties",
        {"type": "object", "maxProperties": 1},
        '{"a": 1, "b": 2}',
        '{"a": 1}',
        "maxProperties",
    ),
    (
        "propertyNames",
        {"type": "object", "propertyNames": {"maxLength": 3}},
        '{"long": 1}',
        '{"abc": 1}',
        "maxLength",
    ),
    (
        "dependentRequired",
        {"type": "object", "dependentRequired": {"a": ["b"]}},
        '{"a": 1}',
        '{"a": 1, "b": 2}',
        "dependentRequired",
    ),
    ("unanchored-pattern", {"type": "string", "pattern": "[0-9]{3}"}, '"ab"', '"a123"', "pattern"),
    ("backslash-d-pattern", {"type": "string", "pattern": "^\\d{3}$"}, '"12a"', '"123"', "pattern"),
    ("oneOf-exclusivity", {"oneOf": [{"type": "integer"}, {"type": "number"}]}, "5", "5.5", "oneOf"),
    (
        "items-beside-prefixItems",
        {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "boolean"}},
        "[true]",
        '["a", true]',
        "type",
    ),
]


@pytest.mark.parametrize(
    ("schema", "bad", "good", "rule"), [c[1:] for c in CAUGHT_AFTER], ids=[c[0] for c in CAUGHT_AFTER]
)
def test_parse_and_validate_names_the_failing_rule(
    schema: dict[str, Any], bad: str, good: str, rule: str
) -> None:
    with pytest.raises(SchemaValidationError, match=f"'{rule}'"):
        parse_and_validate(bad, schema)
    assert parse_and_validate(good, schema) == json.loads(good)


def test_schema_validation_error_is_a_grammar_error_and_a_value_error() -> None:
    with pytest.raises(GrammarError):
        parse_and_validate("-1", {"type": "number", "minimum": 0})
    with pytest.raises(ValueError, match="at celsius"):
        parse_and_validate('{"celsius": -1}', {"properties": {"celsius": {"minimum": 0}}})


def test_parse_and_validate_rejects_text_that_is_not_json() -> None:
    with pytest.raises(SchemaValidationError, match="not JSON"):
        parse_and_validate('{"name": "unterminated', {"type": "object"})


def test_parse_and_validate_checks_formats() -> None:
    with pytest.raises(SchemaValidationError, match="'format'"):
        parse_and_validate('"2024-02-31"', {"type": "string", "format": "date"})


def test_closed_tuple_converts() -> None:
    grammar = schema_to_grammar({"type": "array", "prefixItems": [{"type": "integer"}], "items": False})
    assert grammar == schema_to_grammar({"type": "array", "prefixItems": [{"type": "integer"}]})


COLD = "Example of a cold reading in JSON: {example}\nHere is a cold reading, written as JSON:\n"


def _reading(kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"celsius": {"type": kind, "minimum": 0}},
        "required": ["celsius"],
        "additionalProperties": False,
    }


def test_number_minimum_is_enforced_during_generation(complete: Complete) -> None:
    """The model would copy a negative reading; the number grammar has no '-' to offer."""
    schema = _reading("number")
    text = complete(
        COLD.format(example='{"celsius": -12.5}'),
        grammar=schema_to_grammar(schema),
        max_tokens=24,
        temperature=0.0,
    )["choices"][0]["text"]
    assert parse_and_validate(text, schema)["celsius"] >= 0, text


def test_integer_minimum_is_enforced_during_generation(complete: Complete) -> None:
    """Same prompt, integer type: the grammar has no '-' to offer, so the output is valid."""
    schema = _reading("integer")
    text = complete(
        COLD.format(example='{"celsius": -12}'),
        grammar=schema_to_grammar(schema),
        max_tokens=24,
        temperature=0.0,
    )["choices"][0]["text"]
    assert parse_and_validate(text, schema)["celsius"] >= 0
