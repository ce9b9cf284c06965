"""Schemas the grammar now expresses exactly: number bounds, closed tuples in objects,
property counts, a recursion depth bound; and every way a schema reaches the grammar.

Each case is generated on the real model from a prompt that invites the violation
(an example breaking the rule), and the output must be valid without any check after
generation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamacpp_integrations.schema import schema_to_grammar, unenforced
from llamacpp_native import GrammarError, Llama
from llamacpp_native.grammar.json_schema import SchemaPreparer
from llamacpp_native.grammar.number_range import Bound, bounds_of, number_node

Complete = Callable[..., dict[str, Any]]


def _generate(complete: Complete, schema: Any, example: str, max_tokens: int = 48, **kwargs: Any) -> Any:
    prompt = f"Example: {example}\nAnother one, in JSON:\n"
    result = complete(
        prompt, grammar=schema_to_grammar(schema, **kwargs), max_tokens=max_tokens, temperature=0.0
    )
    choice = result["choices"][0]
    assert choice["finish_reason"] == "stop", choice["text"]
    return json.loads(choice["text"])


# -- number bounds -------------------------------------------------------------------------------------

NUMBER_CASES = [
    ({"type": "number", "minimum": 0, "maximum": 1}, '{"x": 1000000000000000}'),
    ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, '{"x": 1}'),
    ({"type": "number", "minimum": -1.5, "maximum": 2.25}, '{"x": -12.5}'),
    ({"type": "number", "exclusiveMaximum": 0}, '{"x": 0}'),
    ({"type": "number", "minimum": 10}, '{"x": 3.5}'),
    ({"type": ["number", "null"], "minimum": 0, "maximum": 5}, '{"x": 7.25}'),
]


@pytest.mark.parametrize(("number", "example"), NUMBER_CASES, ids=[json.dumps(c[0]) for c in NUMBER_CASES])
def test_number_bounds_hold_by_construction(
    complete: Complete, strict_errors: Any, number: dict[str, Any], example: str
) -> None:
    schema = {"type": "object", "properties": {"x": number}, "required": ["x"]}
    assert unenforced(schema) == []
    value = _generate(complete, schema, example)
    assert strict_errors(value, schema) == [], value


def test_the_issue_example_gives_a_number_in_range(complete: Complete) -> None:
    """{"minimum": 0, "maximum": 1} once produced 1000000000000000 and then a SchemaValidationError."""
    schema = {"type": "number", "minimum": 0, "maximum": 1}
    text = complete(
        "A probability, as JSON: 1000000000000000\nAnother probability, as JSON: ",
        grammar=schema_to_grammar(schema),
        max_tokens=24,
        temperature=0.0,
    )["choices"][0]["text"]
    assert 0 <= json.loads(text) <= 1, text


def _in_bounds(value: Decimal, lower: Bound | None, upper: Bound | None) -> bool:
    above = lower is None or value > lower.value or (lower.inclusive and value == lower.value)
    below = upper is None or value < upper.value or (upper.inclusive and value == upper.value)
    return above and below


_bound_values = st.one_of(
    st.integers(-1000, 1000),
    st.decimals(-1000, 1000, places=3, allow_nan=False, allow_infinity=False).map(float),
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    lower=st.one_of(st.none(), _bound_values),
    upper=st.one_of(st.none(), _bound_values),
    exclusive=st.tuples(st.booleans(), st.booleans()),
    probes=st.lists(
        st.decimals(-2000, 2000, places=6, allow_nan=False, allow_infinity=False), min_size=20, max_size=40
    ),
)
def test_the_number_grammar_admits_exactly_the_numbers_in_bounds(
    lower: float | None, upper: float | None, exclusive: tuple[bool, bool], probes: list[Decimal]
) -> None:
    """Rendered as a regular expression: every admitted number is in bounds (as parsed JSON too),
    and every canonical number in bounds with a short enough form is admitted."""
    schema: dict[str, Any] = {"type": "number"}
    if lower is not None:
        schema["exclusiveMinimum" if exclusive[0] else "minimum"] = lower
    if upper is not None:
        schema["exclusiveMaximum" if exclusive[1] else "maximum"] = upper
    low, high = bounds_of(schema)
    if (
        low is not None
        and high is not None
        and (low.value > high.value or (low.value == high.value and not (low.inclusive and high.inclusive)))
    ):
        with pytest.raises(ValueError):
            number_node(low, high)
        return
    admitted = re.compile(number_node(low, high).regex())
    candidates = {format(p.normalize(), "f") for p in probes} | {"0", "1", "-1", "0.5"}
    candidates |= {format(b.value, "f") for b in (low, high) if b is not None}
    for text in candidates:
        if text.startswith("-") and Decimal(text) == 0:
            continue
        value = Decimal(text)
        if admitted.fullmatch(text):
            assert _in_bounds(value, low, high), text
            parsed = json.loads(text)
            assert lower is None or (parsed > lower if exclusive[0] else parsed >= lower), text
            assert upper is None or (parsed < upper if exclusive[1] else parsed <= upper), text
        else:
            assert not _in_bounds(value, low, high), f"{text} is in bounds but not admitted"


def test_an_empty_number_range_is_a_grammar_error() -> None:
    with pytest.raises(GrammarError, match="no number"):
        schema_to_grammar({"type": "number", "minimum": 2, "maximum": 1})


# -- closed tuples, property counts --------------------------------------------------------------------


def test_a_closed_tuple_inside_an_object_converts_and_holds(complete: Complete, strict_errors: Any) -> None:
    """The issue's case: it raised 'JSON schema conversion failed:' with nothing after the colon."""
    schema = {
        "type": "object",
        "properties": {
            "pair": {
                "type": "array",
                "prefixItems": [{"type": "string", "maxLength": 8}, {"type": "integer"}],
                "items": False,
            }
        },
        "required": ["pair"],
    }
    value = _generate(complete, schema, '{"pair": ["a", 1, 2, 3, "b"]}')
    assert strict_errors(value, schema) == [], value
    assert len(value["pair"]) == 2


def test_max_properties_holds_by_construction(complete: Complete, strict_errors: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}},
        "maxProperties": 2,
        "minProperties": 1,
    }
    assert unenforced(schema) == []
    value = _generate(complete, schema, '{"a": 1, "b": 2, "c": 3}')
    assert strict_errors(value, schema) == [], value


def test_impossible_property_counts_are_a_grammar_error() -> None:
    with pytest.raises(GrammarError, match="minProperties/maxProperties"):
        schema_to_grammar(
            {
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "required": ["a"],
                "maxProperties": 0,
            }
        )


# -- recursion depth -----------------------------------------------------------------------------------

TREE = {
    "$defs": {
        "Node": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 6},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2},
            },
            "required": ["name", "children"],
        }
    },
    "$ref": "#/$defs/Node",
}
DEEP = json.dumps(
    {
        "name": "a",
        "children": [{"name": "b", "children": [{"name": "c", "children": [{"name": "d", "children": []}]}]}],
    }
)


def _depth(node: dict[str, Any]) -> int:
    return 1 + max((_depth(child) for child in node["children"]), default=0)


@pytest.mark.parametrize("how", ["argument", "keyword"])
def test_max_depth_bounds_a_recursive_schema(complete: Complete, strict_errors: Any, how: str) -> None:
    if how == "argument":
        schema, kwargs = TREE, {"max_depth": 2}
    else:
        schema, kwargs = {**TREE, "x-max-depth": 2}, {}
    value = _generate(complete, schema, DEEP, max_tokens=96, **kwargs)
    assert strict_errors(value, TREE) == [], value
    assert _depth(value) <= 2, value


def test_a_depth_bound_that_leaves_nothing_is_a_grammar_error() -> None:
    endless = {
        "$defs": {"N": {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}, "required": ["n"]}},
        "$ref": "#/$defs/N",
    }
    with pytest.raises(GrammarError, match="max_depth=3 leaves no valid value"):
        schema_to_grammar(endless, max_depth=3)


def test_a_root_that_refers_to_itself_is_bounded_too() -> None:
    linked = {
        "type": "object",
        "properties": {"v": {"type": "integer"}, "next": {"$ref": "#"}},
        "required": ["v"],
    }
    grammar = schema_to_grammar(linked, max_depth=3)
    assert grammar.count('"\\"next\\""') == 2  # levels 1 and 2 may have a next; level 3 may not


# -- every path a schema takes to the grammar keeps its constraints -----------------------------------


def _chat_grammar(llama: Llama, **kwargs: Any) -> str:
    return llama.render_chat([{"role": "user", "content": "hi"}], **kwargs).grammar


BOUNDED = {
    "type": "object",
    "properties": {
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "level": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["unit", "level"],
}


def _keeps_constraints(grammar: str) -> bool:
    return '"\\"celsius\\""' in grammar and "lcpp-custom-" in grammar


def test_response_format_keeps_number_bounds_and_enum(llama: Llama) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "reading", "schema": BOUNDED}}
    assert _keeps_constraints(_chat_grammar(llama, response_format=rf))


def test_openai_tools_keep_number_bounds_and_enum(llama: Llama) -> None:
    tools = [{"type": "function", "function": {"name": "set", "parameters": BOUNDED}}]
    assert _keeps_constraints(_chat_grammar(llama, tools=tools, tool_choice="required"))


def test_langchain_tools_keep_constraints(llama: Llama) -> None:
    from langchain_core.tools import tool
    from pydantic import BaseModel, Field

    from llamacpp_integrations.langchain.chat_models import _openai_tool

    class Reading(BaseModel):
        unit: str = Field(json_schema_extra={"enum": ["celsius", "fahrenheit"]})
        level: float = Field(ge=0, le=1)

    @tool(args_schema=Reading)
    def set_reading(unit: str, level: float) -> str:
        """Set a reading."""
        return unit

    for source in (set_reading, Reading):
        spec = _openai_tool(source)
        assert _keeps_constraints(_chat_grammar(llama, tools=[spec], tool_choice="required")), source


def test_llama_index_function_tools_keep_constraints(llama: Llama) -> None:
    from llama_index.core.tools import FunctionTool
    from pydantic import BaseModel, Field

    from llamacpp_integrations.llama_index.llms import _openai_tool

    class Reading(BaseModel):
        unit: str = Field(json_schema_extra={"enum": ["celsius", "fahrenheit"]})
        level: float = Field(ge=0, le=1)

    def set_reading(unit: str, level: float) -> str:
        """Set a reading."""
        return unit

    spec = _openai_tool(FunctionTool.from_defaults(fn=set_reading, fn_schema=Reading))
    assert _keeps_constraints(_chat_grammar(llama, tools=[spec], tool_choice="required"))


def test_pydantic_and_dict_schemas_keep_constraints() -> None:
    from pydantic import BaseModel, Field

    class Reading(BaseModel):
        unit: str = Field(json_schema_extra={"enum": ["celsius", "fahrenheit"]})
        level: float = Field(ge=0, le=1)

    for source in (Reading, BOUNDED):
        assert _keeps_constraints(schema_to_grammar(source)), source


def test_a_bounded_tool_argument_is_generated_in_range(llama: Llama) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "set_heating",
                "parameters": {
                    "type": "object",
                    "properties": {"celsius": {"type": "number", "minimum": 5, "maximum": 30}},
                    "required": ["celsius"],
                },
            },
        }
    ]
    result = llama.create_chat_completion(
        [{"role": "user", "content": "Set the heating to minus 50 degrees."}],
        tools=tools,
        tool_choice="required",
        max_tokens=48,
        temperature=0.0,
    )
    call = result["choices"][0]["message"]["tool_calls"][0]
    assert 5 <= json.loads(call["function"]["arguments"])["celsius"] <= 30


def test_the_preparer_leaves_plain_schemas_alone() -> None:
    preparer = SchemaPreparer()
    plain = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}}
    assert preparer.prepare(plain) == plain
    assert not preparer.changed


# -- strict: a schema with rules no grammar enforces is refused before generating ----------------------

NOT_GRAMMAR = {
    "title": "Tags",
    "type": "object",
    "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}},
    "required": ["tags"],
}


def test_langchain_strict_structured_output_refuses_post_validated_rules(llama: Llama) -> None:
    from llamacpp_integrations.langchain import ChatLlamaCpp

    chat = ChatLlamaCpp(client=llama, max_tokens=8)
    with pytest.raises(GrammarError, match=r"strict=True.*uniqueItems at /properties/tags"):
        chat.with_structured_output(NOT_GRAMMAR, strict=True)
    with pytest.raises(GrammarError, match="uniqueItems"):
        chat.with_structured_output(NOT_GRAMMAR, method="function_calling", strict=True)
    tool = {"type": "function", "function": {"name": "tag", "parameters": NOT_GRAMMAR}}
    with pytest.raises(GrammarError, match="tool 'tag'"):
        chat.bind_tools([tool], strict=True)
    chat.with_structured_output(NOT_GRAMMAR)  # not strict: checked after generation instead
    chat.with_structured_output({**BOUNDED, "title": "Reading"}, strict=True)  # all in the grammar


def test_the_server_refuses_a_strict_schema_it_cannot_enforce() -> None:
    from llamacpp_integrations.server.generation import _check_strict_schemas
    from llamacpp_integrations.server.schemas import ChatCompletionRequest

    body = ChatCompletionRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "t", "schema": NOT_GRAMMAR, "strict": True},
            },
        }
    )
    with pytest.raises(GrammarError, match="response_format.json_schema.schema"):
        _check_strict_schemas(body)
    lenient = body.model_copy(update={"response_format": None})
    _check_strict_schemas(lenient)


# -- dates: the calendar, exactly ----------------------------------------------------------------------


def _gbnf_to_regex(body: str) -> str:
    """A rule body made of literals, classes, groups, | and repetitions as a Python regex."""
    out = []
    for token in re.findall(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{[^}]*\}|[()|?*+]|\s+', body):
        if token.startswith('"'):
            out.append(re.escape(json.loads(token)))
        elif not token.isspace():
            out.append(token)
    return "".join(out)


def test_the_date_format_admits_exactly_the_calendar_dates() -> None:
    import datetime

    from llamacpp_native.grammar.json_schema import _DATE_RULES

    date = re.compile(_gbnf_to_regex(_DATE_RULES["date"]))
    for year in (0, 1, 4, 100, 400, 1900, 2000, 2023, 2024, 2100, 9999):
        for month in range(0, 14):
            for day in range(0, 33):
                text = f'"{year:04d}-{month:02d}-{day:02d}"'
                try:
                    datetime.date.fromisoformat(text.strip('"'))
                    valid = True
                except ValueError:
                    valid = False
                assert bool(date.fullmatch(text)) == valid, text
