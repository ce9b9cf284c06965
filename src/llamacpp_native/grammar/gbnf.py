"""JSON schema -> GBNF through llama.cpp's own converter, and grammar checks."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llamacpp_native.binding._library import logger
from llamacpp_native.errors import GrammarError
from llamacpp_native.grammar.json_schema import Conversion, schema_to_gbnf

_LOOSE_SPACE = re.compile(r"^((?:lcpp-f\d+-)?space) ::= .*$", re.MULTILINE)
# llama.cpp's converter renders a pattern's "." as any character but a line break, so a
# JSON string could take in an unescaped quote (and end early, or never) or a control
# character.  Inside JSON strings it may only be the characters JSON allows unescaped.
_PATTERN_DOT = re.compile(r"^((?:lcpp-f\d+-)?dot) ::= \[\^\\x0A\\x0D\]$", re.MULTILINE)
_FREE_TEXT_PREFIX = re.compile(r"\s*\buntil-\d+\??")
_REPEATED_CALLS = re.compile(r"^(tool-calls ::= )\((\S+) space\)\+$", re.MULTILINE)


def tighten_grammar(grammar: str, *, forbid_free_text: bool = False, single_call: bool = False) -> str:
    """Adjust a llama.cpp-generated grammar for reliable output from small models.

    JSON whitespace becomes at most one space (llama.cpp allows newlines and up
    to 20 tabs/spaces between tokens, which small models loop on), and a
    pattern's ``.`` no longer admits a quote, backslash or control character
    inside a JSON string.  With
    ``forbid_free_text`` the root rule's free-text prefix before a tool call is
    removed, so that a required tool call starts at once.  With ``single_call``
    (``parallel_tool_calls=False``) a reply holds one tool-call block, where some
    templates' grammars repeat it.
    """
    grammar = _LOOSE_SPACE.sub(r'\1 ::= " "?', grammar)
    grammar = _PATTERN_DOT.sub(r'\1 ::= [^"\\\\\\x7F\\x00-\\x1F]', grammar)
    if single_call:
        grammar = _REPEATED_CALLS.sub(r"\1\2 space", grammar)
    if forbid_free_text:
        lines = grammar.split("\n")
        lines = [_FREE_TEXT_PREFIX.sub("", line) if line.startswith("root ::=") else line for line in lines]
        grammar = "\n".join(lines)
    return grammar


def json_schema_conversion(schema: Mapping[str, Any] | str, max_depth: int | None = None) -> Conversion:
    """Convert a JSON schema to GBNF, with the converter's warnings (what the grammar leaves out).

    See :func:`json_schema_to_grammar`; ``warnings`` lists what only validation
    after generation can check (an unsupported ``pattern``, for one).
    """
    conversion = schema_to_gbnf(schema, max_depth=max_depth)
    return Conversion(tighten_grammar(conversion.grammar), conversion.warnings)


def json_schema_to_grammar(schema: Mapping[str, Any] | str, max_depth: int | None = None) -> str:
    """Convert a JSON schema (dict or JSON text) to a GBNF grammar.

    llama.cpp's converter does the work; number bounds, ``minProperties`` /
    ``maxProperties`` on closed objects, closed tuples and ``\\d``/``\\w``/``\\s`` in
    patterns are added on top (:mod:`llamacpp_native.grammar.json_schema`).  ``max_depth``
    (or ``"x-max-depth"`` in the schema's root) bounds how deep recursive
    definitions nest.  Raises ``GrammarError`` with the reason when the schema is
    invalid or uses something that cannot be converted; what the grammar leaves
    out (an unsupported pattern) is logged as a warning on the ``llamacpp_native``
    logger (see :func:`json_schema_conversion`).
    """
    conversion = json_schema_conversion(schema, max_depth=max_depth)
    for warning in conversion.warnings:
        logger.warning("JSON schema conversion was incomplete: %s", warning)
    return conversion.grammar


class LlamaGrammar:
    """A GBNF grammar checked against a model's vocabulary when first used.

    Mirrors llama-cpp-python's ``LlamaGrammar`` constructors so existing code
    keeps working: ``from_string``, ``from_file`` and ``from_json_schema``.
    """

    def __init__(self, text: str, root: str = "root") -> None:
        if not text.strip():
            raise GrammarError("the grammar is empty")
        self.text = text
        self.root = root

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = False) -> LlamaGrammar:
        """A grammar from GBNF text (``verbose`` is accepted for compatibility)."""
        return cls(grammar)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], verbose: bool = False) -> LlamaGrammar:
        """A grammar read from a ``.gbnf`` file, or a name of a bundled grammar (``json``, ``list``)."""
        return cls(read_grammar(path))

    @classmethod
    def from_json_schema(
        cls, schema: Mapping[str, Any] | str, verbose: bool = False, max_depth: int | None = None
    ) -> LlamaGrammar:
        """A grammar that only admits JSON valid for ``schema`` (see ``json_schema_to_grammar``)."""
        return cls(json_schema_to_grammar(schema, max_depth=max_depth))

    def __repr__(self) -> str:
        return f"LlamaGrammar({len(self.text)} chars, root={self.root!r})"


BUNDLED_GRAMMARS = Path(__file__).parent / "grammars"


def read_grammar(path: str | os.PathLike[str]) -> str:
    """Read GBNF from a file path, or from a bundled grammar by name (``json``, ``list``)."""
    candidate = Path(path)
    if not candidate.exists() and (BUNDLED_GRAMMARS / f"{path}.gbnf").is_file():
        candidate = BUNDLED_GRAMMARS / f"{path}.gbnf"
    try:
        return candidate.read_text(encoding="utf-8")
    except FileNotFoundError:
        names = sorted(p.stem for p in BUNDLED_GRAMMARS.glob("*.gbnf"))
        raise GrammarError(f"grammar file not found: {path} (bundled grammars: {names})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GrammarError(f"cannot read grammar file {path}: {error}") from error
