"""Structured output is valid by construction: a corpus of schemas, each generated on the real model.

Every schema goes through ``schema_to_grammar`` (llama.cpp's converter), is generated
greedily under that grammar, and the text must validate with ``jsonschema`` -- formats
included -- and through ``parse_and_validate``.  No case may fail: a failure here is a
bug in the converter, the grammar tightening or the engine, not noise.

Strings carry a ``maxLength`` and arrays a ``maxItems`` where a tiny base model would
otherwise repeat forever; that bounds the output, it does not weaken the check.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal, NamedTuple, Optional

import pydantic
import pytest
from typing_extensions import NotRequired, TypedDict

from llamacpp_integrations.schema import to_json_schema
from llamacpp_native import Llama, parse_chat_output


class Case(NamedTuple):
    """One corpus entry.  ``max_tokens`` is generous: each case needs about half of it."""

    id: str
    schema: dict[str, Any]
    subject: str
    max_tokens: int
    example: str | None = None


CASES: list[Case] = [
    Case(
        "flat-object",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 16},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
            },
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        "a person with a name and an age",
        48,
    ),
    Case(
        "nested-object",
        {
            "type": "object",
            "properties": {
                "user": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 12},
                        "address": {
                            "type": "object",
                            "properties": {
                                "city": {"type": "string", "maxLength": 12},
                                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                            },
                            "required": ["city", "zip"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["name", "address"],
                    "additionalProperties": False,
                }
            },
            "required": ["user"],
            "additionalProperties": False,
        },
        "a user with a postal address",
        80,
    ),
    Case(
        "array-of-objects",
        {
            "type": "object",
            "properties": {
                "lines": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 2,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                            "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                        },
                        "required": ["sku", "qty"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["lines"],
            "additionalProperties": False,
        },
        "an order with product lines",
        80,
    ),
    Case(
        "enums",
        {
            "type": "object",
            "properties": {
                "color": {"enum": ["red", "green", "blue"]},
                "size": {"type": "string", "enum": ["S", "M", "L", "XL"]},
                "mixed": {"enum": [1, "two", None, True]},
            },
            "required": ["color", "size", "mixed"],
            "additionalProperties": False,
        },
        "a T-shirt with a color and a size",
        40,
    ),
    Case(
        "anyOf-union",
        {
            "type": "object",
            "properties": {
                "value": {
                    "anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 8}, {"type": "null"}]
                },
            },
            "required": ["value"],
            "additionalProperties": False,
        },
        "a setting with a value",
        32,
    ),
    Case(
        "oneOf-discriminated",
        {
            "type": "object",
            "properties": {
                "shape": {
                    "oneOf": [
                        {
                            "type": "object",
                            "properties": {
                                "kind": {"const": "circle"},
                                "radius": {"type": "integer", "minimum": 1, "maximum": 100},
                            },
                            "required": ["kind", "radius"],
                            "additionalProperties": False,
                        },
                        {
                            "type": "object",
                            "properties": {
                                "kind": {"const": "square"},
                                "side": {"type": "integer", "minimum": 1, "maximum": 100},
                            },
                            "required": ["kind", "side"],
                            "additionalProperties": False,
                        },
                    ]
                }
            },
            "required": ["shape"],
            "additionalProperties": False,
        },
        "a geometric shape",
        48,
    ),
    Case(
        "optional-fields",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 16},
                "subtitle": {"type": "string", "maxLength": 16},
                "pages": {"type": "integer", "minimum": 1, "maximum": 2000},
            },
            "required": ["title"],
            "additionalProperties": False,
        },
        "a book",
        64,
    ),
    Case(
        "defs-ref",
        {
            "$defs": {
                "point": {
                    "type": "object",
                    "properties": {
                        "x": {"type": "integer", "minimum": -100, "maximum": 100},
                        "y": {"type": "integer", "minimum": -100, "maximum": 100},
                    },
                    "required": ["x", "y"],
                    "additionalProperties": False,
                }
            },
            "type": "object",
            "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
            "required": ["start", "end"],
            "additionalProperties": False,
        },
        "a line segment from one point to another",
        64,
    ),
    Case(
        "recursive-ref",
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 8},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
                    },
                    "required": ["name", "children"],
                    "additionalProperties": False,
                }
            },
            "$ref": "#/$defs/node",
        },
        "a small tree of folders",
        96,
        # Without an example the base model nests folders until max_tokens: recursion has no
        # depth bound in the grammar.  One shallow example is enough for it to close the tree.
        '{"name": "home", "children": [{"name": "music", "children": []}]}',
    ),
    Case(
        "allOf",
        {
            "allOf": [
                {
                    "type": "object",
                    "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9999}},
                    "required": ["id"],
                },
                {
                    "type": "object",
                    "properties": {"label": {"type": "string", "maxLength": 12}},
                    "required": ["label"],
                },
            ]
        },
        "a labelled record with an id",
        40,
    ),
    Case(
        "const",
        {
            "type": "object",
            "properties": {
                "version": {"const": 2},
                "kind": {"const": "event"},
                "ok": {"type": "boolean"},
            },
            "required": ["version", "kind", "ok"],
            "additionalProperties": False,
        },
        "an event record",
        32,
    ),
    Case(
        "prefixItems-tuple",
        {
            "type": "array",
            "prefixItems": [
                {"type": "string", "maxLength": 12},
                {"type": "integer", "minimum": 0, "maximum": 150},
                {"type": "boolean"},
            ],
            "minItems": 3,
            "maxItems": 3,
        },
        "a tuple of a name, an age and whether the person is a student",
        32,
    ),
    Case(
        "item-counts",
        {
            "type": "object",
            "properties": {
                "scores": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 10},
                    "minItems": 2,
                    "maxItems": 4,
                }
            },
            "required": ["scores"],
            "additionalProperties": False,
        },
        "a list of scores out of ten",
        40,
    ),
    Case(
        "string-lengths",
        {
            "type": "object",
            "properties": {
                "code": {"type": "string", "minLength": 3, "maxLength": 6},
                "note": {"type": "string", "minLength": 1, "maxLength": 12},
            },
            "required": ["code", "note"],
            "additionalProperties": False,
        },
        "a discount code with a note",
        48,
    ),
    Case(
        "string-pattern",
        {
            "type": "object",
            "properties": {
                "plate": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}-[A-Z]{2}$"},
                "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
            },
            "required": ["plate", "hex"],
            "additionalProperties": False,
        },
        "a car with its licence plate and paint color",
        48,
    ),
    Case(
        "format-date",
        {
            "type": "object",
            "properties": {
                "event": {"type": "string", "maxLength": 12},
                "on": {"type": "string", "format": "date"},
            },
            "required": ["event", "on"],
            "additionalProperties": False,
        },
        "a meeting and the date it takes place",
        48,
    ),
    Case(
        "format-time",
        {
            "type": "object",
            "properties": {"alarm": {"type": "string", "format": "time"}},
            "required": ["alarm"],
            "additionalProperties": False,
        },
        "an alarm clock setting",
        32,
    ),
    Case(
        "format-date-time",
        {
            "type": "object",
            "properties": {"created": {"type": "string", "format": "date-time"}},
            "required": ["created"],
            "additionalProperties": False,
        },
        "a file with its creation timestamp",
        40,
    ),
    Case(
        "format-uuid",
        {
            "type": "object",
            "properties": {"id": {"type": "string", "format": "uuid"}},
            "required": ["id"],
            "additionalProperties": False,
        },
        "a database row with a UUID",
        48,
    ),
    Case(
        "integer-bounds",
        {
            "type": "object",
            "properties": {
                "floor": {"type": "integer", "minimum": -5, "maximum": -1},
                "percent": {"type": "integer", "minimum": 0, "maximum": 100},
                "odd": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 20},
                "big": {"type": "integer", "minimum": 1000000, "maximum": 99999999},
            },
            "required": ["floor", "percent", "odd", "big"],
            "additionalProperties": False,
        },
        "a parking garage record",
        64,
    ),
    Case(
        "deep-nesting",
        {
            "type": "object",
            "properties": {
                "a": {
                    "type": "object",
                    "properties": {
                        "b": {
                            "type": "object",
                            "properties": {
                                "c": {
                                    "type": "object",
                                    "properties": {
                                        "d": {
                                            "type": "object",
                                            "properties": {"e": {"type": "string", "maxLength": 8}},
                                            "required": ["e"],
                                            "additionalProperties": False,
                                        }
                                    },
                                    "required": ["d"],
                                    "additionalProperties": False,
                                }
                            },
                            "required": ["c"],
                            "additionalProperties": False,
                        }
                    },
                    "required": ["b"],
                    "additionalProperties": False,
                }
            },
            "required": ["a"],
            "additionalProperties": False,
        },
        "a deeply nested configuration",
        48,
    ),
    Case(
        "nullable-type-list",
        {
            "type": "object",
            "properties": {
                "middle_name": {"type": ["string", "null"], "maxLength": 10},
                "verified": {"type": "boolean"},
                "deleted": {"type": "null"},
            },
            "required": ["middle_name", "verified", "deleted"],
            "additionalProperties": False,
        },
        "an account",
        40,
    ),
    Case(
        "number",
        {
            "type": "object",
            "properties": {"celsius": {"type": "number"}, "humidity": {"type": "number"}},
            "required": ["celsius", "humidity"],
            "additionalProperties": False,
        },
        "a weather reading",
        64,
    ),
    Case(
        "array-of-enums",
        {
            "type": "object",
            "properties": {
                "days": {
                    "type": "array",
                    "items": {"enum": ["mon", "tue", "wed", "thu", "fri"]},
                    "minItems": 1,
                    "maxItems": 3,
                }
            },
            "required": ["days"],
            "additionalProperties": False,
        },
        "the weekdays a shop is open",
        40,
    ),
    Case(
        "matrix",
        {
            "type": "array",
            "items": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 9},
                "minItems": 2,
                "maxItems": 2,
            },
            "minItems": 2,
            "maxItems": 2,
        },
        "a 2x2 matrix of digits",
        32,
    ),
    Case(
        "root-array-of-objects",
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 10},
                    "rank": {"type": "integer", "minimum": 1, "maximum": 3},
                },
                "required": ["city", "rank"],
                "additionalProperties": False,
            },
            "minItems": 2,
            "maxItems": 2,
        },
        "a ranking of two cities",
        64,
    ),
    Case(
        "root-enum",
        {"enum": ["yes", "no", "maybe"]},
        "an answer to the question whether it will rain",
        8,
    ),
    Case(
        "all-optional-closed",
        {
            "type": "object",
            "properties": {
                "email": {"type": "string", "maxLength": 24},
                "phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"},
            },
            "additionalProperties": False,
        },
        "contact details",
        48,
    ),
]


# -- typed inputs: through to_json_schema ----------------------------------------------------
class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=12)
    country: Literal["FR", "DE", "US", "JP"]


class Employee(pydantic.BaseModel):
    """A pydantic model: nested model ($defs/$ref), Literal, Optional, bounded list."""

    name: str = pydantic.Field(max_length=16)
    role: Literal["admin", "user", "guest"]
    address: Address
    nickname: Optional[str] = pydantic.Field(default=None, max_length=8)  # noqa: UP045 - the anyOf shape
    skills: list[Annotated[str, pydantic.StringConstraints(max_length=10)]] = pydantic.Field(max_length=2)


class Movie(TypedDict):
    """A TypedDict with a required bounded integer and a NotRequired flag."""

    title: Annotated[str, pydantic.StringConstraints(max_length=16)]
    year: Annotated[int, pydantic.Field(ge=1900, le=2030)]
    sequel: NotRequired[bool]


@dataclasses.dataclass
class Reading:
    """A dataclass with a default (so an optional property) and bounded fields."""

    sensor: Annotated[str, pydantic.Field(max_length=8)]
    level: Annotated[int, pydantic.Field(ge=0, le=10)]
    unit: Literal["m", "cm"] = "m"


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}

TYPED_CASES: list[tuple[str, Any, str, int]] = [  # (id, schema-like input, subject, max_tokens)
    ("pydantic-model", Employee, "an employee", 96),
    ("typeddict", Movie, "a movie", 48),
    ("dataclass", Reading, "a water level sensor reading", 40),
    ("openai-tool-spec", WEATHER_TOOL, "the arguments of a weather lookup", 40),
]


def test_the_corpus_covers_every_construct() -> None:
    """The corpus is at least 25 schemas and exercises every construct named in the issue."""
    text = json.dumps([case.schema for case in CASES])
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES)
    for keyword in (
        "$defs",
        "$ref",
        "anyOf",
        "oneOf",
        "allOf",
        "const",
        "enum",
        "prefixItems",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        '"date"',
        '"time"',
        '"date-time"',
        '"uuid"',
        '"additionalProperties": false',
        "minimum",
        "exclusiveMinimum",
        '"required"',
    ):
        assert keyword in text, keyword


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_schema_output_validates(generate_valid: Any, case: Case) -> None:
    generate_valid(case.schema, case.subject, case.max_tokens, case.example)


@pytest.mark.parametrize(
    ("source", "subject", "max_tokens"), [c[1:] for c in TYPED_CASES], ids=[c[0] for c in TYPED_CASES]
)
def test_typed_input_output_validates(
    generate_valid: Any, source: Any, subject: str, max_tokens: int
) -> None:
    value = generate_valid(source, subject, max_tokens)
    if isinstance(source, type) and issubclass(source, pydantic.BaseModel):
        source.model_validate(value)  # the model itself accepts what the grammar produced
    elif source in (Movie, Reading):
        pydantic.TypeAdapter(source).validate_python(value)


def test_to_json_schema_unwraps_each_input_kind() -> None:
    """Tool specs and json_schema blocks unwrap to their parameters; typed inputs become schemas."""
    assert to_json_schema(WEATHER_TOOL) == WEATHER_TOOL["function"]["parameters"]
    assert to_json_schema(WEATHER_TOOL["function"]) == WEATHER_TOOL["function"]["parameters"]
    assert to_json_schema({"name": "answer", "schema": CASES[0].schema}) == CASES[0].schema
    employee = to_json_schema(Employee)
    assert employee["properties"]["address"] == {"$ref": "#/$defs/Address"}
    assert set(to_json_schema(Movie)["required"]) == {"title", "year"}
    assert to_json_schema(Reading)["required"] == ["sensor", "level"]


@pytest.fixture(scope="module")
def chat_json(llama: Llama) -> tuple[dict[str, Any], str]:
    """One chat completion with response_format json_schema: (response, the JSON the parser extracts)."""
    messages = [{"role": "user", "content": "Give me a person with a name and an age, as JSON."}]
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": CASES[0].schema}}
    response = llama.create_chat_completion(
        messages, response_format=response_format, max_tokens=48, temperature=0.0
    )
    assert isinstance(response, dict)
    rendered = llama.render_chat(messages, response_format=response_format)
    parsed = parse_chat_output(
        rendered.parser_params, response["choices"][0]["message"]["content"], parse_tool_calls=False
    )["content"]
    return response, parsed


def test_chat_response_format_grammar_output_validates(
    chat_json: tuple[dict[str, Any], str], strict_errors: Any
) -> None:
    """The chat-template grammar admits only the schema's JSON (optionally in a ```json fence): the
    template's own parser extracts it, and it validates."""
    response, parsed = chat_json
    assert response["choices"][0]["finish_reason"] == "stop"
    assert strict_errors(json.loads(parsed), CASES[0].schema) == []


def test_chat_response_format_content_is_the_json(chat_json: tuple[dict[str, Any], str]) -> None:
    response, parsed = chat_json
    assert response["choices"][0]["message"]["content"] == parsed
