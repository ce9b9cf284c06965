"""What a schema's grammar leaves to validation after generation: ``unenforced``."""

from __future__ import annotations

import json
from typing import Any

from llamacpp_native.errors import GrammarError
from llamacpp_native.grammar import number_range
from llamacpp_native.grammar.json_schema import convert, counted_object_supported, pattern_for_converter
from llamacpp_native.grammar.schema_tree import BOUNDS, SCHEMA_LISTS, SCHEMA_MAPS, SCHEMA_ONE

POST_VALIDATED = (
    "not",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "multipleOf",
    "propertyNames",
    "patternProperties",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "if",
    "unevaluatedProperties",
    "unevaluatedItems",
)
"""Keywords no grammar here expresses: checked after generation (``SchemaValidationError``)."""


GRAMMAR_FORMATS = ("date", "time", "date-time", "uuid")
"""String formats the grammar enforces; any other ``format`` is checked after generation."""


def _pointer(path: tuple[str, ...]) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path) if path else "(root)"


def _disjoint_branches(branches: list[Any]) -> bool:
    """Whether oneOf branches cannot overlap: distinct single types, or a shared const discriminator."""
    types = [b.get("type") for b in branches if isinstance(b, dict)]
    if len(types) == len(branches) and all(isinstance(t, str) for t in types):
        simple = [("number" if t == "integer" else t) for t in types]
        if len(set(simple)) == len(simple):
            return True
    consts = [b.get("const") for b in branches if isinstance(b, dict) and "const" in b]
    if len(consts) == len(branches) and len({json.dumps(c, sort_keys=True) for c in consts}) == len(consts):
        return True
    props: list[dict[str, Any]] = [
        b["properties"] for b in branches if isinstance(b, dict) and isinstance(b.get("properties"), dict)
    ]
    if props and len(props) == len(branches):
        shared = set.intersection(*(set(p) for p in props)) if props else set()
        for key in shared:
            values = [p[key].get("const") if isinstance(p[key], dict) else None for p in props]
            required = all(key in (b.get("required") or []) for b in branches)
            if required and None not in values and len({json.dumps(v) for v in values}) == len(values):
                return True
    return False


def unenforced(schema: Any) -> list[str]:
    """The rules of ``schema`` that its grammar does not enforce, as "keyword at /path (why)".

    Generation can produce JSON that breaks them; validation after generation
    catches it (``SchemaValidationError``).  Empty when the grammar is exact.
    """
    found: list[str] = []
    pattern_cache: dict[str, list[str]] = {}

    def visit(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        where = _pointer(path)
        for key in POST_VALIDATED:
            if key not in node:
                continue
            if key == "uniqueItems" and (not node[key] or node.get("maxItems", 2) <= 1):
                continue
            found.append(f"{key} at {where}")
        for key in ("minProperties", "maxProperties"):
            if key in node and not counted_object_supported(node):
                found.append(f"{key} at {where} (only for objects whose keys are all listed in properties)")
                break
        if node.get("oneOf") and not _disjoint_branches(node["oneOf"]):
            found.append(f"oneOf at {where} (a value matching two branches is not excluded)")
        if isinstance(node.get("allOf"), list):
            parts = node["allOf"]
            if not all(isinstance(p, dict) and ("$ref" in p or "properties" in p) for p in parts):
                found.append(f"allOf at {where} (only objects are merged)")
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt not in GRAMMAR_FORMATS and node.get("type", "string") == "string":
            found.append(f"format {fmt!r} at {where}")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            if pattern not in pattern_cache:
                try:
                    _, warnings = convert({"type": "string", "pattern": pattern_for_converter(pattern)})
                except GrammarError as error:
                    warnings = [str(error)]
                pattern_cache[pattern] = warnings
            if pattern_cache[pattern]:
                found.append(f"pattern {pattern!r} at {where} ({'; '.join(pattern_cache[pattern])})")
        if any(k in node for k in BOUNDS) and (
            node.get("type") == "number" or (isinstance(node.get("type"), list) and "number" in node["type"])
        ):
            try:
                number_range.number_node(*number_range.bounds_of(node))
            except ValueError as error:
                found.append(f"number bounds at {where} ({error})")
        for key in SCHEMA_MAPS:
            if isinstance(node.get(key), dict):
                for name, child in node[key].items():
                    visit(child, (*path, key, name))
        for key in SCHEMA_ONE:
            if isinstance(node.get(key), dict):
                visit(node[key], (*path, key))
        for key in SCHEMA_LISTS:
            if isinstance(node.get(key), list):
                for i, child in enumerate(node[key]):
                    visit(child, (*path, key, str(i)))
        items = node.get("items")
        if isinstance(items, dict):
            visit(items, (*path, "items"))
        elif isinstance(items, list):
            for i, child in enumerate(items):
                visit(child, (*path, "items", str(i)))

    visit(schema if not isinstance(schema, str) else json.loads(schema), ())
    return found
