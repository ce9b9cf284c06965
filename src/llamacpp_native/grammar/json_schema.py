"""JSON schema -> GBNF: llama.cpp's converter, plus what it leaves out.

llama.cpp's converter (``lcpp_json_schema_to_grammar_ex``) expresses most of JSON
Schema.  Before it runs, this module rewrites the parts it cannot express but a
grammar can, and splices its own rules into the result:

* ``minimum`` / ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum`` on
  ``"type": "number"`` (the converter bounds only integers): see
  :mod:`llamacpp_native.grammar.number_range`;
* ``minProperties`` / ``maxProperties`` on objects whose keys are all listed in
  ``properties`` (no ``additionalProperties`` / ``patternProperties``);
* closed tuples (``prefixItems`` with ``items: false``, which the converter
  rejects; without ``items`` it already closes the tuple);
* ``\\d``, ``\\w`` and ``\\s`` in patterns (the converter refuses them; they become
  the ASCII classes, a subset of what Python's ``re`` matches) and unanchored
  patterns (JSON Schema patterns match anywhere in the string);
* a nesting bound for recursive ``$ref`` (``max_depth``, or ``"x-max-depth"`` in
  the schema's root): recursive definitions are unrolled that many levels and
  the references beyond are removed where the schema allows it (an optional
  property, an ``anyOf`` branch, array items).

Each rewritten node becomes a unique string constant for the converter (a
marker), whose literal in the converter's grammar is then replaced by a rule of
ours.  Sub-schemas our rules need (the values of an object's properties) are
converted on their own and their rules renamed apart.

Walking sub-schemas and the depth bound live in ``schema_tree``, the GBNF text
helpers in ``gbnf_rules``, and what the grammar leaves to validation after
generation in ``post_validation``.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llamacpp_native.errors import GrammarError
from llamacpp_native.grammar import number_range
from llamacpp_native.grammar.gbnf_rules import RULE_LINE, gbnf_literal, parse_rules, rename_rules
from llamacpp_native.grammar.schema_tree import BOUNDS, bound_depth, map_subschemas

DEPTH_KEYWORD = "x-max-depth"
"""Root keyword bounding the nesting of recursive definitions (like the ``max_depth`` argument)."""

_PREFIX = "cannot convert JSON schema to a grammar: "
_MARKER = "__lcpp_custom_{}__"
# Calendar dates exactly as ISO 8601 / RFC 3339 (and Python's date.fromisoformat) take
# them: days per month, February 29th only in leap years, no year 0000.  llama.cpp's
# converter admits any day 01-31 in any month.
_YEAR = '([1-9] [0-9]{3} | "0" ([1-9] [0-9]{2} | "0" ([1-9] [0-9] | "0" [1-9])))'
_LEAP = '([0-9]{2} ("0" [48] | [2468] [048] | [13579] [26]) | ("0" [48] | [2468] [048] | [13579] [26]) "00")'
_DATE = (
    f'({_YEAR} "-" (("01" | "03" | "05" | "07" | "08" | "10" | "12") "-" ("0" [1-9] | [12] [0-9] | "3" [01])'
    ' | ("04" | "06" | "09" | "11") "-" ("0" [1-9] | [12] [0-9] | "30")'
    ' | "02-" ("0" [1-9] | "1" [0-9] | "2" [0-8]))'
    f' | {_LEAP} "-02-29")'
)
_TIME = (
    '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )?'
    ' ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )'
)
_DATE_RULES = {
    "date": f'"\\"" {_DATE} "\\""',
    "date-time": f'"\\"" {_DATE} "T" {_TIME} "\\""',
}
_MARKER_LITERAL = re.compile(r'"\\"__lcpp_custom_(\d+)__\\""')


# ---------------------------------------------------------------------------
# patterns


def pattern_for_converter(pattern: str) -> str:
    """``\\d``/``\\w``/``\\s`` as ASCII classes, and the pattern anchored (JSON Schema searches)."""
    classes = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " \\t\\n\\r\\f\\v"}
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt in classes:
                out.append(classes[nxt] if in_class else f"[{classes[nxt]}]")
            else:
                out.append(ch + nxt)
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class and not (out and out[-1] == "["):
            in_class = False
        out.append(ch)
        i += 1
    text = "".join(out)
    starts, ends = text.startswith("^"), text.endswith("$") and not text.endswith("\\$")
    if starts and ends:
        return text
    core = text[1:] if starts else text
    core = core[:-1] if ends else core
    return ("^" if starts else "^.*") + "(" + core + ")" + ("$" if ends else ".*$")


# ---------------------------------------------------------------------------
# the rewrite


@dataclass
class _Document:
    """The definitions of the schema being rewritten (what fragments resolve ``$ref`` against)."""

    defs: dict[str, Any] = field(default_factory=dict)
    key: str = "$defs"


@dataclass
class SchemaPreparer:
    """Rewrites schemas for llama.cpp's converter and keeps the rules that replace the markers.

    One preparer may rewrite several schemas (a chat request's response format and
    its tools' parameters): the markers stay unique across them.  After converting
    the rewritten schemas (directly, or inside a chat template's grammar), pass the
    grammar through :meth:`splice`.
    """

    custom: dict[int, Callable[[str], dict[str, str]]] = field(default_factory=dict)
    counter: itertools.count = field(default_factory=itertools.count)
    fragments: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    document: _Document = field(default_factory=_Document)

    modified: bool = False

    @property
    def changed(self) -> bool:
        """Whether any schema came out different (a grammar from the originals would differ)."""
        return self.modified or bool(self.custom)

    def prepare(self, schema: Any, max_depth: int | None = None) -> Any:
        """``schema`` rewritten for the converter (a copy; ``schema`` is left alone)."""
        document = json.loads(json.dumps(schema))
        if not isinstance(document, dict):
            return document
        depth = max_depth if max_depth is not None else document.get(DEPTH_KEYWORD)
        document = {k: v for k, v in document.items() if k != DEPTH_KEYWORD}
        if depth is not None:
            if isinstance(depth, bool) or not isinstance(depth, int):
                raise GrammarError(f"{DEPTH_KEYWORD} must be an integer, got {depth!r}")
            document = bound_depth(document, depth)
        self.document = context = _Document()
        context.key = "$defs" if "$defs" in document or "definitions" not in document else "definitions"
        raw_defs = document.get(context.key)
        if isinstance(raw_defs, dict):
            context.defs = {name: self.visit(value) for name, value in raw_defs.items()}
        body = self.visit({k: v for k, v in document.items() if k not in ("$defs", "definitions")})
        if isinstance(body, dict) and isinstance(raw_defs, dict):
            body[context.key] = context.defs
        if json.dumps(body, sort_keys=True) != json.dumps(for_prompt(schema), sort_keys=True):
            self.modified = True
        return body

    def rules(self) -> dict[str, str]:
        """Our rules: each marker's replacement and the fragments they use."""
        out: dict[str, str] = {}
        custom: dict[str, str] = {}
        for k, build in self.custom.items():
            custom.update(build(f"lcpp-custom-{k}"))
        for fragment in self.fragments.values():
            out.update(fragment)
        out.update(custom)
        return {name: _splice_markers(body) for name, body in out.items()}

    def splice(self, grammar: str) -> str:
        """A converter's (or chat template's) grammar of prepared schemas, with our rules in."""
        if not self.custom:
            return grammar
        lines = [_splice_markers(line) for line in grammar.splitlines()]
        defined = {m[1] for m in map(RULE_LINE.match, lines) if m}
        extra = self.rules()
        if "space" not in defined and "space" not in extra:
            extra["space"] = '" "?'
        lines.extend(f"{name} ::= {body}" for name, body in extra.items() if name not in defined)
        return "\n".join(line for line in lines if line) + "\n"

    def marker(self, build: Callable[[str], dict[str, str]]) -> dict[str, Any]:
        k = next(self.counter)
        self.custom[k] = build
        return {"const": _MARKER.format(k)}

    def visit(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        node = map_subschemas(node, self.visit)
        if "prefixItems" in node and "items" in node:
            # closed tuple (items: false), or items that the converter would let replace the
            # tuple: without items the converter produces exactly the tuple, valid for both
            node = {k: v for k, v in node.items() if k != "items"}
        if isinstance(node.get("pattern"), str) and node.get("type", "string") == "string":
            node = {**node, "pattern": pattern_for_converter(node["pattern"])}
        number = self._number(node)
        if number is not None:
            return number
        if (
            isinstance(node.get("format"), str)
            and node["format"] in _DATE_RULES
            and node.get("type") == "string"
            and not any(
                k in node for k in ("pattern", "enum", "const", "minLength", "maxLength", "anyOf", "$ref")
            )
        ):
            date_body = _DATE_RULES[node["format"]]
            return self.marker(lambda name: {name: date_body})
        counted = self._counted_object(node)
        if counted is not None:
            return counted
        return node

    def _number(self, node: dict[str, Any]) -> Any:
        types = node.get("type")
        if not any(k in node for k in BOUNDS) or "enum" in node or "const" in node:
            return None
        if any(k in node for k in ("anyOf", "oneOf", "allOf", "$ref", "not")):
            return None
        if types == "number":
            others: list[str] = []
        elif isinstance(types, list) and "number" in types and "integer" not in types:
            others = [t for t in types if t != "number"]
        else:
            return None
        lower = upper = None
        try:
            lower, upper = number_range.bounds_of(node)
            body = number_range.number_node(lower, upper).gbnf()
        except ValueError as error:
            if lower is not None and upper is not None and lower.value > upper.value:
                raise GrammarError(f"no number satisfies the schema {json.dumps(node)}: {error}") from None
            self.warnings.append(f"number bounds {json.dumps(node)} are checked after generation: {error}")
            return None
        marker = self.marker(lambda name: {name: body})
        if not others:
            return marker
        rest = {k: v for k, v in node.items() if k not in BOUNDS}
        rest["type"] = others if len(others) > 1 else others[0]
        return {"anyOf": [marker, rest]}

    def _counted_object(self, node: dict[str, Any]) -> Any:
        if not counted_object_supported(node):
            return None
        props: dict[str, Any] = node["properties"]
        listed = node.get("required") or []
        min_props, max_props = node.get("minProperties", 0), node.get("maxProperties", len(props))
        if not isinstance(listed, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in (min_props, max_props)
        ):
            return None  # malformed: the converter (or the schema check) says why
        required = [name for name in props if name in listed]
        optional = [name for name in props if name not in required]
        low = max(min_props, len(required))
        high = min(max_props, len(props))
        if low > high:
            raise GrammarError(
                f"no object satisfies minProperties/maxProperties with these properties: {json.dumps(node)}"
            )
        document = self.document

        def build(name: str) -> dict[str, str]:
            kv = {prop: self._kv(prop, props[prop], document) for prop in props}
            return _object_rules(name, required, optional, low, high, kv)

        return self.marker(build)

    def _kv(self, name: str, schema: Any, document: _Document) -> str:
        value = self.fragment(schema, document)
        return f'{gbnf_literal(json.dumps(name, ensure_ascii=False))} space ":" space {value}'

    def fragment(self, schema: Any, document: _Document) -> str:
        """Convert ``schema`` on its own; its rules join ours renamed apart; returns its root rule."""
        k = len(self.fragments)
        self.fragments[f"lcpp-f{k}"] = {}
        source: Any = schema
        if isinstance(schema, dict) and document.defs:
            source = {**schema, document.key: {**document.defs, **(schema.get(document.key) or {})}}
        grammar, warnings = convert(source)
        self.warnings.extend(warnings)
        self.fragments[f"lcpp-f{k}"] = rename_rules(parse_rules(grammar), f"lcpp-f{k}-")
        return f"lcpp-f{k}-root"


def _without_items_beside_prefix_items(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    node = map_subschemas(node, _without_items_beside_prefix_items)
    if "prefixItems" in node and "items" in node:
        node = {k: v for k, v in node.items() if k != "items"}
    return node


def for_prompt(schema: Any) -> Any:
    """``schema`` as a chat template may show it and convert it without failing.

    Only what llama.cpp's converter rejects outright is changed (``items`` beside
    ``prefixItems``), and this package's own keyword dropped.
    """
    document = json.loads(json.dumps(schema))
    if isinstance(document, dict):
        document.pop(DEPTH_KEYWORD, None)
    return _without_items_beside_prefix_items(document)


def counted_object_supported(node: Any) -> bool:
    """Whether ``minProperties``/``maxProperties`` on ``node`` become grammar (a closed, listed object)."""
    if not isinstance(node, dict) or ("minProperties" not in node and "maxProperties" not in node):
        return False
    if node.get("type", "object") != "object" or not isinstance(node.get("properties"), dict):
        return False
    if node.get("additionalProperties", False) is not False or "patternProperties" in node:
        return False
    return not any(k in node for k in ("anyOf", "oneOf", "allOf", "$ref", "not", "enum", "const"))


def _splice_markers(text: str) -> str:
    return _MARKER_LITERAL.sub(lambda m: f"lcpp-custom-{m[1]}", text)


def _object_rules(
    name: str, required: list[str], optional: list[str], low: int, high: int, kv: dict[str, str]
) -> dict[str, str]:
    """Rules for an object with the required properties, then between low and high in all."""
    n = len(optional)
    rules: dict[str, str] = {}
    memo: dict[tuple[int, int, bool], str | None] = {}

    def rest(i: int, count: int, first: bool) -> str | None:
        """A rule for the optional properties from index i, ``count`` present so far."""
        key = (i, count, first)
        if key in memo:
            return memo[key]
        memo[key] = None
        if i == n or count == high:
            result = '""' if count >= low else None
        else:
            options: list[str] = []
            after = rest(i + 1, count + 1, False)
            if after is not None:
                sep = "" if first else '"," space '
                options.append(f"{sep}{kv[optional[i]]} {after}")
            skip = rest(i + 1, count, first)
            if skip is not None:
                options.append(skip)
            if options:
                rule = f"{name}-{i}-{count}-{int(first)}"
                rules[rule] = " | ".join(dict.fromkeys(options))
                result = rule
            else:
                result = None
        memo[key] = result
        return result

    head = ' "," space '.join(kv[prop] for prop in required)
    tail = rest(0, len(required), not required)
    if tail is None:
        raise GrammarError("no object satisfies minProperties/maxProperties with these properties")
    inner = " ".join(part for part in (head, tail) if part and part != '""')
    rules[name] = f'"{{" space {inner} space "}}"' if inner else '"{" space "}"'
    return rules


def convert(schema: Any) -> tuple[str, list[str]]:
    """llama.cpp's converter alone: (grammar, warnings)."""
    from llamacpp_native.binding._library import ensure_backend, ffi, lib, take_message

    ensure_backend()
    text = schema if isinstance(schema, str) else json.dumps(schema)
    out = ffi.new("char **")
    warnings = ffi.new("char **")
    status = lib.lcpp_json_schema_to_grammar_ex(text.encode("utf-8"), out, warnings)
    notes = take_message(warnings)
    result = take_message(out)
    if status != 0:
        raise GrammarError(f"{_PREFIX}{result or 'unknown error'}")
    return result, [line for line in notes.splitlines() if line]


@dataclass
class Conversion:
    """A converted schema: the grammar, and what it does not enforce (the converter's warnings)."""

    grammar: str
    warnings: list[str]


def schema_to_gbnf(schema: Mapping[str, Any] | str, max_depth: int | None = None) -> Conversion:
    """Convert a JSON schema to GBNF with this module's additions (see the module docstring)."""
    if isinstance(schema, str):
        try:
            document = json.loads(schema)
        except json.JSONDecodeError as error:
            raise GrammarError(f"{_PREFIX}parse error: {error}") from None
    else:
        try:
            document = json.loads(json.dumps(schema))
        except (TypeError, ValueError) as error:
            raise GrammarError(f"{_PREFIX}the schema is not JSON-serialisable: {error}") from error
    preparer = SchemaPreparer()
    try:
        prepared = preparer.prepare(document, max_depth)
    except GrammarError as error:
        message = str(error)
        if not message.startswith(_PREFIX):
            message = _PREFIX + message
        raise GrammarError(message) from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError):
        # a malformed schema: llama.cpp's converter judges it as given
        preparer = SchemaPreparer()
        prepared = document
    grammar, warnings = convert(prepared)
    return Conversion(preparer.splice(grammar), preparer.warnings + warnings)
