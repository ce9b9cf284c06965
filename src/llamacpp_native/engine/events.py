"""Typed output events: what one request produced, before any front end shapes it.

Every front end (``Llama``'s llama-cpp-python dicts, the server's SSE, LangChain's
message chunks, LlamaIndex's responses) renders these and nothing else.  A batch
of events comes out per engine chunk; ``Finish`` and ``Usage`` close the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from llamacpp_native.engine.types import TokenLogprob


@dataclass(slots=True)
class TextDelta:
    """More of the reply's visible text (``content``)."""

    text: str


@dataclass(slots=True)
class ReasoningDelta:
    """More of the model's thinking (``reasoning_content``), kept apart from the content."""

    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of tool call ``index``: its id and name come once, on the call's first delta."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


@dataclass(slots=True)
class LogprobsDelta:
    """Log-probabilities of the tokens behind the text of the same batch."""

    items: list[TokenLogprob]


@dataclass(slots=True)
class Finish:
    """The reply ended: ``stop``, ``length`` (max_tokens or the context) or ``tool_calls``."""

    reason: str


@dataclass(slots=True)
class Usage:
    """Token counts of the request; ``cached_tokens`` of the prompt came from the prefix cache.

    ``draft_tokens`` speculative guesses were verified, of which ``draft_accepted`` were right.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    draft_tokens: int = 0
    draft_accepted: int = 0


@dataclass(slots=True)
class PromptProgress:
    """How far the prompt has been read, before any output (only when asked: ``return_progress``):
    ``processed`` of its ``total`` tokens, ``cached`` of them taken from the prefix cache."""

    total: int
    cached: int
    processed: int


Event: TypeAlias = (
    TextDelta | ReasoningDelta | ToolCallDelta | LogprobsDelta | Finish | Usage | PromptProgress
)
