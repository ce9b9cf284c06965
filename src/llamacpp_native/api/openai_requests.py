"""OpenAI request fields as the engine takes them: tools, ``tool_choice``, ``response_format``.

Shared by ``Llama``, the framework integrations and the server, so each rule is
written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def normalise_tool_choice(
    tools: list[dict[str, Any]] | None, tool_choice: Any
) -> tuple[list[dict[str, Any]] | None, str]:
    """OpenAI ``tool_choice`` -> (tools to offer, auto|required|none)."""
    if not tools:
        return None, "none"
    if tool_choice is None or tool_choice == "auto":
        return tools, "auto"
    if tool_choice in ("none", "required"):
        return tools, tool_choice
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [t for t in tools if t.get("function", {}).get("name") == name]
        if not chosen:
            known = [t.get("function", {}).get("name") for t in tools]
            raise ValueError(
                f"tool_choice names tool {name!r}, which is not among the tools offered: {known}"
            )
        return chosen, "required"
    raise ValueError(
        f"tool_choice must be 'auto', 'none', 'required' or {{'type': 'function', ...}}, not {tool_choice!r}"
    )


def check_tools(tools: list[dict[str, Any]] | None) -> None:
    """Raise ``ValueError`` unless every tool is ``{"type": "function", "function": {"name": ...}}``."""
    for tool in tools or []:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not function.get("name"):
            raise ValueError(
                f"each tool needs {{'type': 'function', 'function': {{'name': ...}}}}; got {tool!r}"
            )


def schema_from_response_format(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema an OpenAI ``response_format`` asks for (None for text or nothing)."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return dict(response_format.get("schema") or {"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        return dict(spec.get("schema") or response_format.get("schema") or {"type": "object"})
    if kind == "text":
        return None
    raise ValueError(f"response_format type must be text, json_object or json_schema, not {kind!r}")
