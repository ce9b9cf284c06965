"""A JSON schema as a tree: its sub-schemas, and recursive definitions unrolled to a bounded depth."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from llamacpp_native.errors import GrammarError

# The keywords whose values are sub-schemas: maps of them, one, or lists of them; and number bounds.
SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SCHEMA_ONE = (
    "additionalProperties",
    "not",
    "contains",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
)
SCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def map_subschemas(node: Any, fn: Callable[[Any], Any]) -> Any:
    """A copy of ``node`` with ``fn`` applied to each direct sub-schema (not to data like enum/const)."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: fn(value) for name, value in out[key].items()}
    for key in SCHEMA_ONE:
        if isinstance(out.get(key), dict):
            out[key] = fn(out[key])
    for key in SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [fn(value) for value in out[key]]
    items = out.get("items")
    if isinstance(items, dict):
        out["items"] = fn(items)
    elif isinstance(items, list):
        out["items"] = [fn(value) for value in items]
    return out


def _ref_name(ref: Any) -> str | None:
    if isinstance(ref, str):
        for prefix in ("#/$defs/", "#/definitions/"):
            if ref.startswith(prefix) and "/" not in ref[len(prefix) :]:
                return ref[len(prefix) :]
    return None


def _refs_in(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        name = _ref_name(node.get("$ref"))
        if name is not None:
            found.add(name)
        map_subschemas(node, lambda child: _refs_in(child, found))


def _recursive_defs(defs: dict[str, Any]) -> set[str]:
    """Definitions that can reach themselves through ``$ref``."""
    edges: dict[str, set[str]] = {}
    for name, schema in defs.items():
        found: set[str] = set()
        _refs_in(schema, found)
        edges[name] = {n for n in found if n in defs}
    recursive = set()
    for start in defs:
        seen: set[str] = set()
        todo = list(edges[start])
        while todo:
            name = todo.pop()
            if name == start:
                recursive.add(start)
                break
            if name not in seen:
                seen.add(name)
                todo.extend(edges[name])
    return recursive


def _never(node: Any) -> bool:
    return node is False


def _simplify(node: Any) -> Any:
    """Propagate ``False`` (no valid value) upwards; False when ``node`` itself admits nothing."""
    if not isinstance(node, dict):
        return node
    node = map_subschemas(node, _simplify)
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            kept = [branch for branch in node[key] if not _never(branch)]
            if not kept:
                return False
            node[key] = kept
    if isinstance(node.get("allOf"), list) and any(_never(b) for b in node["allOf"]):
        return False
    if _never(node.get("not")):
        node.pop("not")
    props = node.get("properties")
    if isinstance(props, dict):
        required = set(node.get("required") or [])
        for name in [n for n, v in props.items() if _never(v)]:
            if name in required:
                return False
            del props[name]
    if _never(node.get("items")):
        node.pop("items")
        if "prefixItems" not in node:
            if (node.get("minItems") or 0) > 0:
                return False
            node["maxItems"] = 0
    if isinstance(node.get("prefixItems"), list) and any(_never(i) for i in node["prefixItems"]):
        first = next(i for i, item in enumerate(node["prefixItems"]) if _never(item))
        if (node.get("minItems") or 0) > first:
            return False
        node["prefixItems"] = node["prefixItems"][:first]
        node["maxItems"] = min(node.get("maxItems", first), first)
    if _never(node.get("additionalProperties")):
        node["additionalProperties"] = False
    return node


def bound_depth(schema: dict[str, Any], max_depth: int) -> dict[str, Any]:
    """``schema`` with its recursive definitions unrolled ``max_depth`` levels deep."""
    if max_depth < 1:
        raise GrammarError(f"max_depth must be at least 1, got {max_depth}")
    schema = copy.deepcopy(schema)
    defs_key = "$defs" if "$defs" in schema or "definitions" not in schema else "definitions"
    defs: dict[str, Any] = dict(schema.get(defs_key) or {})
    # a reference to the root itself: move the root into the definitions first
    root_refs: set[str] = set()

    def find_root_refs(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("$ref") == "#":
                root_refs.add("#")
            map_subschemas(node, find_root_refs)
        return node

    find_root_refs(schema)
    if root_refs:
        root_name = "lcpp-root"
        body = {k: v for k, v in schema.items() if k not in ("$defs", "definitions", "$schema", "$id")}

        def point_root(node: Any) -> Any:
            if isinstance(node, dict):
                node = map_subschemas(node, point_root)
                if node.get("$ref") == "#":
                    node = {**node, "$ref": f"#/{defs_key}/{root_name}"}
            return node

        defs = {name: point_root(value) for name, value in defs.items()}
        defs[root_name] = point_root(body)
        schema = {k: v for k, v in schema.items() if k in ("$schema", "$id")}
        schema["$ref"] = f"#/{defs_key}/{root_name}"
    recursive = _recursive_defs(defs)
    if not recursive:
        return schema
    copies: dict[tuple[str, int], Any] = {}

    def name_at(name: str, level: int) -> str:
        return f"{name}-lcpp-depth-{level}" if name in recursive else name

    def rewrite(node: Any, level: int) -> Any:
        if not isinstance(node, dict):
            return node
        node = map_subschemas(node, lambda child: rewrite(child, level))
        name = _ref_name(node.get("$ref"))
        if name in recursive:
            assert name is not None
            depth = level + 1
            if depth > max_depth:
                return False
            if (name, depth) not in copies:
                copies[(name, depth)] = None  # placeholder against cycles
                copies[(name, depth)] = rewrite(defs[name], depth)
            node = {**node, "$ref": f"#/{defs_key}/{name_at(name, depth)}"}
        return node

    new_defs = {name: rewrite(value, 0) for name, value in defs.items() if name not in recursive}
    root = rewrite({k: v for k, v in schema.items() if k not in ("$defs", "definitions")}, 0)
    for (name, depth), value in copies.items():
        new_defs[name_at(name, depth)] = value
    # simplify: False propagates through definitions (to a fixed point) and the root
    changed = True
    while changed:
        changed = False
        for name, value in list(new_defs.items()):
            simple = _simplify(value)
            if simple is False and value is not False:
                new_defs[name] = False
                changed = True
            elif simple is not False:
                new_defs[name] = simple
        dead = {n for n, v in new_defs.items() if v is False}

        def kill(node: Any, dead: set[str] = dead) -> Any:
            if isinstance(node, dict):
                node = map_subschemas(node, kill)
                if _ref_name(node.get("$ref")) in dead:
                    return False
            return node

        for name, value in list(new_defs.items()):
            if value is not False:
                killed = kill(value)
                if killed is False or killed != value:
                    new_defs[name] = killed
                    changed = changed or killed is False
        root = kill(root)
    root = _simplify(root)
    if root is False:
        raise GrammarError(
            f"max_depth={max_depth} leaves no valid value: every way to end the recursion is required "
            "by the schema; raise max_depth or make the recursive part optional"
        )
    root[defs_key] = {n: v for n, v in new_defs.items() if v is not False}
    return root
