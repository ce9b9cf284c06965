"""A gate in front of a native handle: calls in flight are counted, and closing waits for them.

Each object that owns native memory (a model, a context, a projector, chat
templates) has one ``Gate``.  Every call that uses the memory runs inside it
(``with gate:``); ``close()`` refuses new calls with ``ClosedError`` and waits
until the calls in flight have left, so nothing is freed under a running call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

from llamacpp_native.errors import ClosedError, CloseInsideCallError


class Gate:
    """Counts the calls in flight on one native object, per thread, and refuses new ones once closing.

    A thread already inside may enter again (a call made by a call), even while
    the gate is closing: it is in flight, and closing waits for it anyway.
    """

    __slots__ = ("_lock", "_left", "_inside", "_closing", "what", "message")

    def __init__(self, what: str, message: str | None = None) -> None:
        self.what = what
        """What the object is, for error messages (``model x.gguf``)."""
        self.message = message or f"{what} is closed"
        """``ClosedError``'s message for a call after closing began."""
        self._lock = threading.Lock()
        self._left = threading.Condition(self._lock)
        self._inside: dict[int, int] = {}
        """Thread id -> how deep that thread is inside."""
        self._closing = False

    def __enter__(self) -> None:
        ident = threading.get_ident()
        with self._lock:
            depth = self._inside.get(ident, 0)
            if self._closing and not depth:
                raise ClosedError(self.message)
            self._inside[ident] = depth + 1

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        ident = threading.get_ident()
        with self._lock:
            depth = self._inside[ident] - 1
            if depth:
                self._inside[ident] = depth
                return
            del self._inside[ident]
            if self._closing and not self._inside:
                self._left.notify_all()

    @property
    def closing(self) -> bool:
        """Whether ``close()`` has begun: new calls get ``ClosedError``."""
        return self._closing

    @property
    def entered_here(self) -> bool:
        """Whether the calling thread is inside a call."""
        with self._lock:
            return threading.get_ident() in self._inside

    def check_close(self) -> None:
        """Raise ``CloseInsideCallError`` if the calling thread is inside (so it could not close)."""
        if self.entered_here:
            raise CloseInsideCallError(
                f"{self.what} cannot be closed from inside one of its own calls (a callback or "
                "signal handler that ran during it); close it once that call has returned"
            )

    def close(self, interrupt: Callable[[], object] | None = None) -> bool:
        """Refuse new calls, then wait until the calls in flight have left.

        ``interrupt`` runs once new calls are refused and before waiting (to cut a
        long call short).  Returns True for the call that closed the gate, False
        if it was already closing (that caller frees; this one has waited too).
        Raises ``CloseInsideCallError``, changing nothing, when called from inside.
        """
        self.check_close()
        with self._lock:
            first = not self._closing
            self._closing = True
        if interrupt is not None:
            interrupt()
        with self._lock:
            self._left.wait_for(lambda: not self._inside)
        return first
