"""Turning a stream of token bytes into safe text: UTF-8 and stop strings."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class Utf8Stream:
    """Incremental UTF-8 decoding that never emits half a character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = False  # the decoder holds the first bytes of a character

    def push(self, data: bytes) -> str:
        """Decode the next bytes; incomplete trailing sequences wait for more."""
        if not self._partial:
            try:
                return data.decode()  # the common case: whole characters
            except UnicodeDecodeError:
                pass
        text = self._decoder.decode(data)
        self._partial = bool(self._decoder.getstate()[0])
        return text

    def flush(self) -> str:
        """Emit whatever is pending (an incomplete sequence becomes U+FFFD)."""
        self._partial = False
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Hold back text that could be the start of a stop string; cut at the first stop.

    ``push`` returns the text that is safe to emit.  Once a stop string is
    seen, ``stopped`` is True and nothing of the stop string (or after it) is
    ever emitted, even when it spans several tokens.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """Add generated text; return the part that can be emitted now."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        pending = self._pending + text
        cut = -1
        for stop in self.stops:
            index = pending.find(stop)
            if index != -1 and (cut == -1 or index < cut):
                cut, self.matched = index, stop
        if cut != -1:
            self.stopped = True
            self._pending = ""
            return pending[:cut]
        hold = self._longest_partial(pending)
        self._pending = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold]

    def _longest_partial(self, text: str) -> int:
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best

    def flush(self) -> str:
        """Release held-back text at the end of generation."""
        pending, self._pending = self._pending, ""
        return "" if self.stopped else pending
