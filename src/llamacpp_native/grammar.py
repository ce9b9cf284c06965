"""JSON schema -> GBNF through llama.cpp's own converter, and grammar checks."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llamacpp_native._library import ensure_backend, ffi, lib, take_string
from llamacpp_native.errors import GrammarError

_LOOSE_SPACE = re.compile(r"^space ::= .*$", re.MULTILINE)
_FREE_TEXT_PREFIX = re.compile(r"\s*\buntil-\d+\??")
_REPEATED_CALLS = re.compile(r"^(tool-calls ::= )\((\S+) space\)\+$", re.MULTILINE)


def tighten_grammar(grammar: str, *, forbid_free_text: bool = False, single_call: bool = False) -> str:
    """Adjust a llama.cpp-generated grammar for reliable output from small models.

    JSON whitespace becomes at most one space (llama.cpp allows newlines and up
    to 20 tabs/spaces between tokens, which small models loop on).  With
    ``forbid_free_text`` the root rule's free-text prefix before a tool call is
    removed, so that a required tool call starts at once.  With ``single_call``
    (``parallel_tool_calls=False``) a reply holds one tool-call block, where some
    templates' grammars repeat it.
    """
    grammar = _LOOSE_SPACE.sub('space ::= " "?', grammar)
    if single_call:
        grammar = _REPEATED_CALLS.sub(r"\1\2 space", grammar)
    if forbid_free_text:
        lines = grammar.split("\n")
        lines = [_FREE_TEXT_PREFIX.sub("", line) if line.startswith("root ::=") else line for line in lines]
        grammar = "\n".join(lines)
    return grammar


def json_schema_to_grammar(schema: Mapping[str, Any] | str) -> str:
    """Convert a JSON schema (dict or JSON text) to a GBNF grammar.

    Raises ``GrammarError`` with llama.cpp's reason when the schema is invalid
    or uses something the converter cannot express.
    """
    ensure_backend()
    if isinstance(schema, str):
        text = schema
    else:
        try:
            text = json.dumps(schema)
        except (TypeError, ValueError) as error:
            raise GrammarError(f"schema is not JSON-serialisable: {error}") from error
    out = ffi.new("char **")
    status = lib.lcpp_json_schema_to_grammar(text.encode("utf-8"), out)
    try:
        return tighten_grammar(take_string(status, out, GrammarError))
    except GrammarError as error:
        raise GrammarError(f"cannot convert JSON schema to a grammar: {error}") from None


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
    def from_json_schema(cls, schema: Mapping[str, Any] | str, verbose: bool = False) -> LlamaGrammar:
        """A grammar that only admits JSON valid for ``schema``."""
        return cls(json_schema_to_grammar(schema))

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
