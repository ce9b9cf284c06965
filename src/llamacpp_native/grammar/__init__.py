"""Constrained output: GBNF grammars, JSON schema to grammar, integer and number ranges."""
