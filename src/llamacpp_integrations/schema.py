"""Structured output: anything schema-like -> JSON schema -> GBNF, and validation.

The grammar comes from llama.cpp's own JSON-schema converter plus this package's
additions (``llamacpp_native.grammar.json_schema``), so output is valid by construction
for everything they express ($ref/$defs, anyOf, allOf of objects, enum, const,
required/optional, additionalProperties, prefixItems and closed tuples, item
counts, string lengths, patterns and the date/time/uuid formats, integer and
number bounds, property counts of closed objects, a recursion depth bound).
What no grammar here expresses (``not``, ``uniqueItems``, ``multipleOf``,
lookaround patterns, ...: ``unenforced(schema)`` lists them) is checked after
generation with ``jsonschema``; a failure raises ``SchemaValidationError``
naming the rule, and ``strict=True`` refuses such a schema before generating.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, get_type_hints

import jsonschema
import pydantic

from llamacpp_native import GrammarError, OutputTruncatedError, SchemaValidationError, json_schema_to_grammar
from llamacpp_native.grammar.post_validation import unenforced

__all__ = [
    "check_schema",
    "check_strict",
    "parse_and_validate",
    "schema_to_grammar",
    "to_json_schema",
    "truncation_error",
    "unenforced",
]


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
    validator_class(schema)


def validator_class(schema: Mapping[str, Any]) -> type[Any]:
    """The jsonschema validator of ``schema`` (``GrammarError`` if it is not a valid schema).

    Its ``$schema``'s, else the newest draft's; a schema without ``$schema`` that only draft 7
    allows (a list of ``items``, a tuple) is read as draft 7, as llama.cpp's converter reads it.
    """
    newest = jsonschema.validators.validator_for(schema)
    try:
        newest.check_schema(schema)
    except jsonschema.SchemaError as error:
        if "$schema" not in schema:
            try:
                jsonschema.Draft7Validator.check_schema(schema)
            except jsonschema.SchemaError:
                pass
            else:
                return jsonschema.Draft7Validator
        raise GrammarError(f"invalid JSON schema: {error.message} (at {list(error.absolute_path)})") from None
    return newest


def schema_to_grammar(schema: Any, *, strict: bool = False, max_depth: int | None = None) -> str:
    """GBNF that only admits JSON valid for ``schema`` (checked before any decoding).

    ``strict=True`` refuses (``GrammarError``) a schema with rules the grammar
    cannot enforce (see ``unenforced``) instead of leaving them to validation
    after generation.  ``max_depth`` bounds how deep recursive definitions nest
    (``"x-max-depth"`` in the schema's root does the same).
    """
    json_schema = to_json_schema(schema)
    check_schema(json_schema)
    if strict:
        check_strict(json_schema)
    return json_schema_to_grammar(json_schema, max_depth=max_depth)


def check_strict(schema: Any, what: str = "the schema") -> None:
    """Raise ``GrammarError`` naming every rule of ``schema`` that only validation after generation checks."""
    rules = unenforced(to_json_schema(schema))
    if rules:
        raise GrammarError(
            f"strict=True, but {what} has rules that a grammar cannot enforce during generation: "
            + "; ".join(rules)
            + ". Remove them, or pass strict=False to have them checked after generation "
            "(a violation then raises SchemaValidationError)."
        )


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
    kind = validator_class(json_schema)
    validator = kind(json_schema, format_checker=kind.FORMAT_CHECKER)
    failure = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if failure is not None:
        where = "/".join(str(p) for p in failure.absolute_path) or "(root)"
        raise SchemaValidationError(f"output violates '{failure.validator}' at {where}: {failure.message}")
    return value
