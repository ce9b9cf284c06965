"""llama-server's ``timings`` block of a generation, measured where the server sees the request.

``prompt_ms`` runs from the moment the request is started (rendered, tokenized and
queued) to its first generated output, so it includes any wait for a slot;
``predicted_ms`` runs from that first output to the end.  The first token comes with the
prompt's last batch, so the generation rate counts the steps after it (``predicted_n - 1``),
as llama-server's does.
"""

from __future__ import annotations

import time
from typing import Any


class Timings:
    """Start, first output and end of one generation; ``as_json`` renders llama-server's fields."""

    __slots__ = ("started", "prompt_started", "first_output", "ended")

    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self.prompt_started: float | None = None
        """When the first prompt-progress event was rendered (the request's admission)."""
        self.first_output: float | None = None
        self.ended: float | None = None

    def output(self) -> None:
        """Note generated output (only the first call counts)."""
        if self.first_output is None:
            self.first_output = time.perf_counter()

    def end(self) -> None:
        """Note the end of the generation (only the first call counts)."""
        if self.ended is None:
            self.ended = time.perf_counter()

    def elapsed_ms(self) -> float:
        """Milliseconds since the request started."""
        return (time.perf_counter() - self.started) * 1000.0

    def at_progress(self, processed: int, cached: int) -> dict[str, Any]:
        """The ``timings`` of a prompt-progress event: ``processed`` prompt tokens in the sequence, ``cached``
        of them from the prefix cache (``prompt_ms`` is 0 until one is decoded), nothing predicted yet."""
        if self.prompt_started is None:
            self.prompt_started = time.perf_counter()
        prompt_n = max(processed - cached, 0)
        prompt_ms = (time.perf_counter() - self.prompt_started) * 1000.0 if prompt_n else 0.0
        return _timings(cached, prompt_n, prompt_ms, 0, 0.0)

    def as_json(
        self, prompt_tokens: int, cached_tokens: int, predicted_tokens: int, drafted: tuple[int, int] = (0, 0)
    ) -> dict[str, Any]:
        """``{cache_n, prompt_n, prompt_ms, ..., predicted_per_second}`` as llama-server reports them.

        ``prompt_n`` counts the prompt tokens decoded for this request (those not
        taken from the prefix cache, which ``cache_n`` counts).  Under speculative decoding
        ``drafted`` (guesses verified, guesses kept) adds ``draft_n`` and ``draft_n_accepted``.
        """
        now = time.perf_counter()
        ended = self.ended if self.ended is not None else now
        first = self.first_output if self.first_output is not None else ended
        prompt_n = max(prompt_tokens - cached_tokens, 0)
        prompt_ms = (first - self.started) * 1000.0
        predicted_ms = (ended - first) * 1000.0
        timings = _timings(cached_tokens, prompt_n, prompt_ms, predicted_tokens, predicted_ms)
        if drafted[0]:
            timings["draft_n"], timings["draft_n_accepted"] = drafted
        return timings


def _timings(
    cache_n: int, prompt_n: int, prompt_ms: float, predicted_n: int, predicted_ms: float
) -> dict[str, Any]:
    """llama-server's ``timings`` fields from its counts and times; the generation rate counts the
    steps after the first token, which cost no decode of their own."""
    steps = max(predicted_n - 1, 0)
    return {
        "cache_n": cache_n,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n * 1000.0 / prompt_ms if prompt_ms > 0 else 0.0,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / steps if steps else 0.0,
        "predicted_per_second": 1e3 / predicted_ms * steps if predicted_ms > 0 else 0.0,
    }
