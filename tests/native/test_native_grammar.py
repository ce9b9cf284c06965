"""Grammars: GBNF forces the output's language; bad grammars fail before any decoding."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llamacpp_native import GrammarError, Llama, LlamaGrammar, json_schema_to_grammar, read_grammar

LIST_PREFIX = re.compile(r"(- [^\n]+\n)*(-( [^\n]*)?)?")
"""Everything the bundled ``list`` grammar can produce, cut anywhere."""


def completion_text(llama: Llama, prompt: str, **kwargs: object) -> str:
    kwargs.setdefault("temperature", 0.0)
    result = llama.create_completion(prompt, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, dict)
    return str(result["choices"][0]["text"])


def test_a_two_word_grammar_allows_only_those_words(llama: Llama) -> None:
    grammar = 'root ::= ("yes" | "no")'
    assert completion_text(llama, "Is the sky blue? Answer:", grammar=grammar, max_tokens=8) in {"yes", "no"}


def test_a_grammar_overrides_what_the_model_would_say(llama: Llama) -> None:
    assert completion_text(llama, "1, 2, 3, 4,", grammar='root ::= "banana"', max_tokens=8) == "banana"


def test_the_bundled_list_grammar_gives_lines_starting_with_a_dash(llama: Llama) -> None:
    text = completion_text(llama, "Shopping list:\n", grammar=LlamaGrammar.from_file("list"), max_tokens=10)
    assert text.startswith("- ")
    assert LIST_PREFIX.fullmatch(text), text


def test_the_bundled_grammars_are_found_by_name() -> None:
    assert "root ::=" in read_grammar("list")
    assert "root" in read_grammar("json")


def test_a_grammar_file_is_read_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "digits.gbnf"
    path.write_text("root ::= [0-9]+\n", encoding="utf-8")
    assert LlamaGrammar.from_file(path).text == "root ::= [0-9]+\n"


def test_a_missing_grammar_file_is_a_grammar_error_listing_the_bundled_ones(tmp_path: Path) -> None:
    with pytest.raises(GrammarError, match=r"not found.*'json', 'list'"):
        LlamaGrammar.from_file(tmp_path / "nope.gbnf")


def test_an_empty_grammar_is_a_grammar_error() -> None:
    with pytest.raises(GrammarError, match="empty"):
        LlamaGrammar.from_string("   ")


def test_an_invalid_grammar_fails_before_decoding_and_the_model_still_works(llama: Llama) -> None:
    before = llama.engine.context.perf()
    with pytest.raises(GrammarError, match="invalid GBNF grammar"):
        llama.create_completion("1, 2, 3, 4,", grammar="root ::= sentence", max_tokens=4)
    after = llama.engine.context.perf()
    assert (after["prompt_tokens"], after["eval_tokens"]) == (before["prompt_tokens"], before["eval_tokens"])
    assert completion_text(llama, "1, 2, 3, 4,", max_tokens=4) == " 5, "


@pytest.mark.parametrize(
    ("grammar", "reason"),
    [
        ("root ::= sentence", r"Undefined rule identifier 'sentence'"),
        ("root ::= snake_case", r"expecting newline or end \(line 1, column 15: root ::= snake_case\)"),
        (
            'root ::= "a"\nx ::= "b" (\n',
            r"expecting '\)' at the end of the grammar \(line 2, column 1: x ::= \"b\" \(\)",
        ),
        ('root ::= "\\q"', r"unknown escape \(line 1"),
        ('rot ::= "a"', r"no rule named 'root'"),
        ("# only a comment", r"defines no rules"),
        ('root ::= x\nx ::= x "a"', r"left recursion"),
    ],
    ids=["undefined-rule", "syntax", "second-line", "escape", "no-root", "empty", "left-recursion"],
)
def test_a_gbnf_error_message_says_what_is_wrong_and_where(llama: Llama, grammar: str, reason: str) -> None:
    """llama.cpp prints parse errors to stderr; ours come in the exception, with the line."""
    with pytest.raises(GrammarError, match=reason):
        llama.create_completion("x", grammar=grammar, max_tokens=2)


def test_a_gbnf_error_is_not_printed_to_stderr(model_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from llamacpp_native import Llama, GrammarError
        llama = Llama({str(model_path)!r}, n_ctx=64, n_parallel=1, n_threads=1)
        try:
            llama.create_completion("x", grammar="root ::= snake_case", max_tokens=2)
        except GrammarError as error:
            print("raised", error)
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "raised invalid GBNF grammar: expecting newline or end" in child.stdout
    assert "error parsing grammar" not in child.stderr


def test_a_grammar_with_too_many_repetitions_is_a_grammar_error(llama: Llama) -> None:
    with pytest.raises(GrammarError, match="invalid GBNF grammar"):
        llama.create_completion("x", grammar="root ::= [a-z]{5000}", max_tokens=2)


def test_a_json_schema_becomes_a_grammar_of_its_json(llama: Llama) -> None:
    grammar = LlamaGrammar.from_json_schema(
        {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    )
    text = completion_text(llama, "Reply in JSON:", grammar=grammar, max_tokens=12)
    assert re.fullmatch(r'\{ ?"ok" ?: ?(true|false) ?\}', text), text


def test_json_schema_whitespace_is_at_most_one_space() -> None:
    grammar = json_schema_to_grammar({"type": "object", "properties": {"a": {"type": "string"}}})
    assert 'space ::= " "?' in grammar


def test_an_invalid_json_schema_is_a_grammar_error_saying_why() -> None:
    with pytest.raises(GrammarError, match="type must be a string or an array of strings"):
        json_schema_to_grammar({"type": 12})


def test_schema_text_that_is_not_json_is_a_grammar_error() -> None:
    with pytest.raises(GrammarError, match="parse error"):
        json_schema_to_grammar('{"type": "object",')


def test_a_grammar_that_admits_nothing_is_an_error_not_a_crash(model_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from llamacpp_native import Llama, LlamaError
        llama = Llama({str(model_path)!r}, n_ctx=64, n_parallel=1, n_threads=1)
        try:
            llama.create_completion("Number:", grammar="root ::= [5-1]", max_tokens=4, temperature=0.0)
        except LlamaError as error:
            print("raised", type(error).__name__)
        print(llama.create_completion("1, 2, 3, 4,", max_tokens=2, temperature=0.0)["choices"][0]["text"])
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "raised GrammarError" in child.stdout
    assert child.stdout.rstrip().endswith(" 5")


# -- the indexed grammar search: the same tokens as llama.cpp's own check, and the same output ----------

DOCUMENTS = {
    "schema": (
        {
            "type": "object",
            "properties": {
                "people": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "maxLength": 12},
                            "age": {"type": "integer"},
                        },
                        "required": ["name", "age"],
                    },
                },
                "score": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["people", "score"],
        },
        '{"people": [{"name": "Ann Lee", "age": 42}, {"name": "日本語 é\\n", "age": -7}], "score": 0.25}',
    ),
    "json": (None, '{"a": [1, 2.5e10, true, null, "x\\u00e9y"], "b": {"c": "日本"}}'),
    "unicode": ('root ::= "é" [a-zé]* "ü" | "日本" [^x]{0,3} "."', "日本abc."),
}


def _admitted(sampler: object, reference: bool) -> list[int]:
    from llamacpp_native.binding._library import ffi, lib

    n = lib.lcpp_grammar_admitted(sampler, reference, ffi.NULL, 0)
    assert n >= 0
    out = ffi.new("llama_token[]", max(n, 1))
    lib.lcpp_grammar_admitted(sampler, reference, out, n)
    return list(out)[:n]


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_the_indexed_search_admits_exactly_what_llama_cpp_admits(llama: Llama, name: str) -> None:
    """At every step of a document, the vocabulary index finds exactly llama.cpp's admitted tokens."""
    from llamacpp_native.binding._library import ffi, lib
    from llamacpp_native.binding.sampling import GrammarSpec, _grammar_sampler

    source, text = DOCUMENTS[name]
    if name == "json":
        grammar = read_grammar("json")
    elif isinstance(source, dict):
        grammar = json_schema_to_grammar(source)
    else:
        grammar = source
    vocab = llama.model.vocab
    sampler = ffi.gc(_grammar_sampler(vocab, GrammarSpec(grammar), 1), lib.llama_sampler_free)
    error = ffi.new("char **")
    tokens = vocab.tokenize(text, add_special=False)
    for step, token in enumerate([*tokens, None]):
        fast, reference = _admitted(sampler, False), _admitted(sampler, True)
        assert fast == reference, f"step {step}: {len(fast)} vs {len(reference)} admitted"
        if token is None:
            break
        assert token in reference, f"step {step}: the document's own token {token} is not admitted"
        assert lib.lcpp_sampler_accept(sampler, token, error) == 0


CONSTRAINED = [
    ("Describe a person in JSON format:", "schema"),
    ("A JSON list of three colours:", "json"),
    ("Is the sky blue? Answer:", 'root ::= ("yes" | "no") " because " [a-z ]{1,40} "."'),
]


@pytest.mark.parametrize("temperature", [0.0, 0.7], ids=["greedy", "sampled"])
@pytest.mark.parametrize(("prompt", "which"), CONSTRAINED, ids=["schema", "json", "gbnf"])
def test_the_indexed_search_generates_what_llama_cpp_search_generates(
    llama: Llama, monkeypatch: pytest.MonkeyPatch, prompt: str, which: str, temperature: float
) -> None:
    """Same seed, same output with either search: the faster one changes nothing but the time."""
    from llamacpp_native.binding import sampling

    if which == "schema":
        grammar = json_schema_to_grammar(DOCUMENTS["schema"][0])
    elif which == "json":
        grammar = read_grammar("json")
    else:
        grammar = which
    outputs = []
    for search in ("indexed", "llama.cpp"):
        monkeypatch.setattr(sampling, "GRAMMAR_SEARCH", search)
        outputs.append(
            completion_text(llama, prompt, grammar=grammar, max_tokens=24, seed=7, temperature=temperature)
        )
    assert outputs[0] == outputs[1]


def test_converter_warnings_come_back_instead_of_going_to_stderr(caplog: pytest.LogCaptureFixture) -> None:
    from llamacpp_native.grammar.gbnf import json_schema_conversion

    schema = {"type": "string", "pattern": "^(?!a)b$"}
    conversion = json_schema_conversion(schema)
    assert conversion.warnings == [
        "pattern ^(?!a)b$ is not supported by llama.cpp's converter, accepting any string"
    ]
    with caplog.at_level("WARNING", logger="llamacpp_native"):
        json_schema_to_grammar(schema)
    assert "pattern ^(?!a)b$ is not supported" in caplog.text


def test_a_converter_warning_is_not_printed_to_stderr() -> None:
    script = textwrap.dedent(
        """
        from llamacpp_native import json_schema_to_grammar
        json_schema_to_grammar({"type": "string", "pattern": "^(?!a)b$"})
        print("converted")
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "converted" in child.stdout
    assert "JSON schema conversion was incomplete" not in child.stderr
