"""GBNF text as the converter writes it: string literals, rules by name, renaming rules apart."""

from __future__ import annotations

import re

RULE_LINE = re.compile(r"^([A-Za-z0-9-]+) ::= (.*)$")
_GBNF_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{[^}]*\}|[A-Za-z0-9-]+|\s+|.', re.DOTALL)


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def parse_rules(grammar: str) -> dict[str, str]:
    """A converter grammar (one rule per line) as {name: body}, in order."""
    rules: dict[str, str] = {}
    for line in grammar.splitlines():
        match = RULE_LINE.match(line)
        if match:
            rules[match[1]] = match[2]
    return rules


def rename_rules(rules: dict[str, str], prefix: str) -> dict[str, str]:
    """``rules`` with every rule name (defined or referenced) prefixed."""

    def body(text: str) -> str:
        parts = []
        for token in _GBNF_TOKEN.findall(text):
            parts.append(prefix + token if token in rules else token)
        return "".join(parts)

    return {prefix + name: body(text) for name, text in rules.items()}
