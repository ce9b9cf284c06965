"""Structured output: anything schema-like -> JSON schema -> GBNF, and validation.

The grammar comes from llama.cpp's own JSON-schema converter, so output is valid
by construction for everything it expresses ($ref/$defs, anyOf/oneOf/allOf,
enum, const, required/optional, additionalProperties, prefixItems, item counts,
string lengths/patterns/formats, integer bounds).  What it cannot express
(number bounds, uniqueItems, not, ...) is checked after generation with
``jsonschema``; a failure raises ``SchemaValidationError`` naming the rule.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, get_type_hints

import jsonschema
import pydantic

from llamacpp_native import GrammarError, OutputTruncatedError, SchemaValidationError, json_schema_to_grammar


def to_json_schema(schema: Any) -> dict[str, Any]:
    """JSON schema of a pydantic model, TypedDict, dataclass, JSON-schema dict or OpenAI tool spec."""
    if isinstance(schema, Mapping):
        if schema.get("type") == "function" and isinstance(schema.get("function"), Mapping):
            return dict(schema["function"].get("parameters") or {"type": "object", "properties": {}})
        if "name" in schema and "parameters" in schema and "type" not in schema:
            return dict(schema["parameters"])
        if isinstance(schema.get("schema"), Mapping) and "name" in schema:  # OpenAI json_schema block
            return dict(schema["schema"])
        return dict(schema)
    if isinstance(schema, type) and issubclass(schema, pydantic.BaseModel):
        return schema.model_json_schema()
    if dataclasses.is_dataclass(schema) or _is_typed_dict(schema):
        return pydantic.TypeAdapter(schema).json_schema()
    raise GrammarError(
        f"cannot derive a JSON schema from {schema!r}: give a pydantic model, TypedDict, dataclass, "
        "JSON-schema dict or OpenAI tool spec"
    )


def _is_typed_dict(obj: Any) -> bool:
    return (
        isinstance(obj, type)
        and issubclass(obj, dict)
        and hasattr(obj, "__total__")
        and bool(get_type_hints(obj))
    )


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise ``GrammarError`` if ``schema`` is not a valid JSON schema."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise GrammarError(f"invalid JSON schema: {error.message} (at {list(error.absolute_path)})") from None


def schema_to_grammar(schema: Any) -> str:
    """GBNF that only admits JSON valid for ``schema`` (checked before any decoding)."""
    json_schema = to_json_schema(schema)
    check_schema(json_schema)
    return json_schema_to_grammar(_for_converter(json_schema))


def _for_converter(schema: Any) -> Any:
    """The schema as llama.cpp's converter reads it best.

    The converter rejects ``items: false`` next to ``prefixItems`` (a closed tuple)
    and lets an ``items`` schema there replace the tuple; without ``items`` it
    produces exactly the tuple, which satisfies both forms.
    """
    if isinstance(schema, list):
        return [_for_converter(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: _for_converter(value) for key, value in schema.items()}
    if "prefixItems" in converted:
        converted.pop("items", None)
    return converted


def truncation_error(finish_reason: str | None, output_tokens: int | None = None) -> OutputTruncatedError:
    """The error for structured output that ``max_tokens`` cut off (``finish_reason == "length"``)."""
    after = f" after {output_tokens} tokens" if output_tokens else ""
    return OutputTruncatedError(
        f"the reply stopped at max_tokens{after} before the JSON value was complete "
        f"(finish_reason={finish_reason!r}); raise max_tokens, or bound the schema "
        "(maxLength, maxItems, maxProperties) so the value fits"
    )


def parse_and_validate(
    text: str, schema: Any, *, finish_reason: str | None = None, output_tokens: int | None = None
) -> Any:
    """Parse generated JSON and validate it; ``SchemaValidationError`` names the failing rule.

    With ``finish_reason="length"``, JSON that does not parse raises
    ``OutputTruncatedError`` naming ``max_tokens`` instead of a decode error.
    """
    json_schema = to_json_schema(schema)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if finish_reason == "length":
            raise truncation_error(finish_reason, output_tokens) from None
        raise SchemaValidationError(
            f"output is not JSON ({error.msg} at {error.pos}): {text[:200]!r}"
        ) from None
    validator_class = jsonschema.validators.validator_for(json_schema)
    validator = validator_class(json_schema, format_checker=validator_class.FORMAT_CHECKER)
    failure = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if failure is not None:
        where = "/".join(str(p) for p in failure.absolute_path) or "(root)"
        raise SchemaValidationError(f"output violates '{failure.validator}' at {where}: {failure.message}")
    return value
