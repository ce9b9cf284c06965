"""The typed output events (``llamacpp_native.events``, documented): they live in ``engine/events.py``."""

from llamacpp_native.engine.events import (
    Event,
    Finish,
    LogprobsDelta,
    PromptProgress,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "Event",
    "Finish",
    "LogprobsDelta",
    "PromptProgress",
    "ReasoningDelta",
    "TextDelta",
    "ToolCallDelta",
    "Usage",
]
