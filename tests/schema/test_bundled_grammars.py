"""The bundled GBNF grammars (``json``, ``list``) on the real model."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from llamacpp_native import LlamaGrammar

Complete = Callable[..., dict[str, Any]]


def test_json_grammar_admits_only_json(complete: Complete, json_prefix: Callable[[str], bool]) -> None:
    result = complete(
        "Describe a person in JSON format:",
        grammar=LlamaGrammar.from_file("json"),
        max_tokens=160,
        temperature=0.0,
    )
    text = result["choices"][0]["text"]
    assert json_prefix(text), text  # even where max_tokens cut it off
    if result["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text), (dict, list))


@pytest.fixture(scope="module")
def book_list(complete: Complete) -> dict[str, str]:
    result = complete(
        "List of top-3 books:", grammar=LlamaGrammar.from_file("list"), max_tokens=64, temperature=0.0
    )
    return {"text": result["choices"][0]["text"], "finish_reason": result["choices"][0]["finish_reason"]}


def test_list_grammar_output_is_dash_lines(book_list: dict[str, str]) -> None:
    lines = book_list["text"].split("\n")
    if book_list["finish_reason"] == "stop":
        assert lines.pop() == "", "a finished list ends with a newline"
    assert lines and all(line.startswith("- ") and len(line) > 2 for line in lines), book_list["text"]


def test_list_grammar_gives_several_complete_items(book_list: dict[str, str]) -> None:
    assert book_list["text"].count("\n- ") >= 2, book_list["text"]
