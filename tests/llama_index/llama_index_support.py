"""Shared by the LlamaIndex tests: load settings and a recording tool."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llama_index.core.tools import FunctionTool

# One load for every test here: the LLM and the embedder name the same settings,
# so they share one loaded model.  One thread: CI shares two cores between workers.
LOAD_SETTINGS: dict[str, Any] = {"n_ctx": 2000, "n_threads": 1, "n_threads_batch": 1, "seed": 1234}


@dataclass
class RecordingTool:
    """A Python tool that remembers how it was called."""

    calls: list[tuple[int, int]] = field(default_factory=list)

    def multiply(self, a: int, b: int) -> int:
        """Multiply two integers."""
        self.calls.append((a, b))
        return a * b

    def tool(self, return_direct: bool = False) -> FunctionTool:
        return FunctionTool.from_defaults(self.multiply, name="multiply", return_direct=return_direct)
