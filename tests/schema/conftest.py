"""Helpers for the structured-output tests: grammar-constrained generation and strict validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from llamacpp_integrations.schema import parse_and_validate, schema_to_grammar, to_json_schema
from llamacpp_native import Llama


def prompt_for(subject: str, example: str | None = None) -> str:
    """A plain request for JSON that a small base model continues with the value itself."""
    shot = f"Example of {subject} in JSON: {example}\n" if example else ""
    return f"{shot}Here is {subject}, written as JSON:\n"


def _strict_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every jsonschema violation of ``value``, formats (date, time, uuid...) included."""
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [
        f"{e.validator} at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(value)
    ]


@pytest.fixture
def strict_errors() -> Callable[[Any, dict[str, Any]], list[str]]:
    """``strict_errors(value, schema)``: every violation, formats included (empty when valid)."""
    return _strict_errors


@pytest.fixture(scope="session")
def complete(llama: Llama) -> Callable[..., dict[str, Any]]:
    """``llama.create_completion`` without streaming, typed as the dict it then returns."""

    def run(prompt: str, **kwargs: Any) -> dict[str, Any]:
        result = llama.create_completion(prompt, **kwargs)
        assert isinstance(result, dict)
        return result

    return run


@pytest.fixture
def generate_valid(complete: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
    """Generate JSON for a schema-like input greedily under its grammar, and insist it is valid."""

    def run(source: Any, subject: str, max_tokens: int, example: str | None = None) -> Any:
        schema = to_json_schema(source)
        grammar = schema_to_grammar(source)
        result = complete(
            prompt_for(subject, example), grammar=grammar, max_tokens=max_tokens, temperature=0.0
        )
        choice = result["choices"][0]
        text = choice["text"]
        assert choice["finish_reason"] == "stop", (
            f"the grammar was not completed within {max_tokens} tokens: {text!r}"
        )
        value = json.loads(text)
        assert _strict_errors(value, schema) == [], text
        assert parse_and_validate(text, source) == value
        return value

    return run
