"""Property test: random schemas from the grammar's exact subset, generated on the real model.

Hypothesis draws 200 small schemas (objects, arrays, closed tuples, anyOf, enums,
consts, bounded integers and numbers, nullable numbers, strings with lengths,
patterns or formats, property counts), each is generated from greedily on the real
model, and every output must be valid for ``jsonschema`` with no rule left to
validation after generation (``unenforced`` is empty for all of them).

Strings, arrays and numbers are bounded, and the prompt shows a valid example, so
every document closes well within ``max_tokens``; the whole test takes a few
minutes on two cores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamacpp_integrations.schema import schema_to_grammar, unenforced

Complete = Callable[..., dict[str, Any]]

NAMES = ["id", "name", "score", "tags", "kind", "size", "note", "ok"]
WORDS = ["red", "green", "blue", "small", "big"]


@st.composite
def integers(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.integers(-50, 50))
    return {"type": "integer", "minimum": low, "maximum": low + draw(st.integers(0, 200))}


@st.composite
def numbers(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.integers(-1000, 1000)) / draw(st.sampled_from([1, 10, 100]))
    high = low + draw(st.integers(1, 500)) / draw(st.sampled_from([1, 10, 100]))
    schema: dict[str, Any] = {"type": draw(st.sampled_from(["number", ["number", "null"]]))}
    schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = high
    return schema


@st.composite
def strings(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["length", "enum", "pattern", "date"]))
    if kind == "enum":
        return {
            "type": "string",
            "enum": draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3, unique=True)),
        }
    if kind == "pattern":
        return {
            "type": "string",
            "pattern": draw(st.sampled_from(["^[a-z]{1,4}$", "^[A-Z][0-9]{2}$", "\\d{2}"])),
        }
    if kind == "date":
        return {"type": "string", "format": "date"}
    high = draw(st.integers(1, 6))
    return {"type": "string", "minLength": draw(st.integers(0, high)), "maxLength": high}


leaves = st.one_of(
    integers(),
    numbers(),
    strings(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.sampled_from(WORDS + [1, True]).map(lambda v: {"const": v}),
)


def containers(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def array(draw: st.DrawFn) -> dict[str, Any]:
        high = draw(st.integers(1, 3))
        return {
            "type": "array",
            "items": draw(children),
            "minItems": draw(st.integers(0, high)),
            "maxItems": high,
        }

    @st.composite
    def tuple_(draw: st.DrawFn) -> dict[str, Any]:
        return {
            "type": "array",
            "prefixItems": draw(st.lists(children, min_size=1, max_size=2)),
            "items": False,
        }

    @st.composite
    def obj(draw: st.DrawFn) -> dict[str, Any]:
        names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: draw(children) for name in names},
            "required": draw(st.lists(st.sampled_from(names), unique=True)),
        }
        if draw(st.booleans()):
            schema["maxProperties"] = draw(st.integers(max(1, len(schema["required"])), len(names)))
        return schema

    @st.composite
    def any_of(draw: st.DrawFn) -> dict[str, Any]:
        return {"anyOf": draw(st.lists(children, min_size=2, max_size=2))}

    return st.one_of(array(), tuple_(), obj(), any_of())


schemas = st.recursive(leaves, containers, max_leaves=5).filter(lambda s: "properties" in s or "items" in s)


def example(schema: dict[str, Any]) -> Any:
    """A short valid instance of a schema drawn above (the prompt's example)."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return example(schema["anyOf"][0])
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        return {
            name: example(sub) for name, sub in schema["properties"].items() if name in schema["required"]
        }
    if kind == "array":
        if "prefixItems" in schema:
            return [example(sub) for sub in schema["prefixItems"]]
        return [example(schema["items"])] * max(schema.get("minItems", 0), 1 if schema["maxItems"] else 0)
    if kind == "integer":
        return schema["minimum"]
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        return round((low + high) / 2, 2) if low < round((low + high) / 2, 2) < high else (low + high) / 2
    if kind == "string":
        if schema.get("format") == "date":
            return "2024-05-17"
        pattern = schema.get("pattern")
        if pattern is not None:
            return {"^[a-z]{1,4}$": "abc", "^[A-Z][0-9]{2}$": "B12", "\\d{2}": "a42"}[pattern]
        return "abcdef"[: max(schema["minLength"], min(3, schema["maxLength"]))]
    if kind == "boolean":
        return True
    return None


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
@given(schema=schemas)
def test_random_schemas_generate_valid_json_without_post_validation(
    complete: Complete, schema: dict[str, Any]
) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert unenforced(schema) == [], "the strategy drew a rule the grammar does not enforce"
    shown = example(schema)
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(shown)), shown
    result = complete(
        f"Example: {json.dumps(shown)}\nAnother one, in JSON:\n",
        grammar=schema_to_grammar(schema, strict=True),
        max_tokens=256,
        temperature=0.0,
    )
    choice = result["choices"][0]
    assert choice["finish_reason"] == "stop", f"did not close: {json.dumps(schema)} {choice['text']!r}"
    value = json.loads(choice["text"])
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = [f"{e.validator} at {list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)]
    assert errors == [], (json.dumps(schema), choice["text"])
