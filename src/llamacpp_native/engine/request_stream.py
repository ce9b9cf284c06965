"""The consumer side of a submitted request: chunks out, sync or async, and ``cancel()``.

The engine's decode thread only appends raw tokens (id, bytes, logprob) to a
request's queue.  Turning them into text, cutting at stop strings and counting
usage happens here, on the consumer's thread, so a slow consumer never delays
the decode loop; when a stop string ends the text, the engine is told to retire
the sequence at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

from llamacpp_native.engine.text_stream import StopMatcher, Utf8Stream
from llamacpp_native.engine.types import Chunk, GenerationRequest, TokenLogprob
from llamacpp_native.errors import GenerationCancelled

MAX_BACKLOG = 64
"""Raw tokens a request may hold unread before the engine pauses it (others go on)."""


class _Token(NamedTuple):
    token: int
    piece: bytes
    logprob: TokenLogprob | None


class _Progress(NamedTuple):
    processed: int  # prompt tokens in the sequence so far


class SequenceOutput:
    """Per-sequence output bookkeeping: tokens -> safe text chunks, stop, length, logprobs.

    A token's logprob is released together with the text it starts in, so logprobs
    of tokens swallowed by a stop string are never reported.
    """

    def __init__(self, request: GenerationRequest, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.utf8 = Utf8Stream()
        self.stops = StopMatcher(request.stop)
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self._produced = 0  # characters decoded so far (emitted or held back)
        self._emitted = 0  # characters released so far
        self._pending: list[tuple[int, TokenLogprob]] = []  # (start offset, logprob)

    def feed(
        self, token: int, piece: bytes, logprob: TokenLogprob | None = None
    ) -> tuple[str, list[TokenLogprob]]:
        """Record a generated token; return the text (and logprobs) that may be emitted now."""
        self.tokens.append(token)
        decoded = self.utf8.push(piece)
        if logprob is not None:
            self._pending.append((self._produced, logprob))
        self._produced += len(decoded)
        stops = self.stops
        text = stops.push(decoded) if stops.stops else decoded
        self._emitted += len(text)
        if stops.stopped:
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.limit:
            self.finish_reason = "length"
        return text, self._release(final=False) if self._pending else []

    def end(self, reason: str) -> tuple[str, list[TokenLogprob]]:
        """Finish with ``reason`` (if not already finished); return held-back text and logprobs."""
        if self.finish_reason is None:
            self.finish_reason = reason
        tail = self.stops.push(self.utf8.flush()) + self.stops.flush()
        self._emitted += len(tail)
        return tail, self._release(final=True)

    def _release(self, final: bool) -> list[TokenLogprob]:
        if not self._pending:
            return []
        if final and not self.stops.stopped:
            ready = [lp for _start, lp in self._pending]
            self._pending = []
            return ready
        ready = [lp for start, lp in self._pending if start < self._emitted]
        self._pending = [] if final else [(s, lp) for s, lp in self._pending if s >= self._emitted]
        return ready


def wake_all(streams: Iterable[RequestStream]) -> None:
    """Wake the readers of ``streams``: each thread once, and each event loop once for all its streams.

    The decode thread calls this once per step, so an asyncio server with many
    streams gets one wake-up per step instead of one per token.
    """
    loops: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
    for stream in streams:
        with stream._lock:
            stream._lock.notify_all()
        if stream.wakeup is not None:
            stream.wakeup.set()
        loop, event = stream._loop, stream._event
        if loop is not None and event is not None:
            loops.setdefault(loop, []).append(event)
    for loop, events in loops.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
            loop.call_soon_threadsafe(_set_all, events)


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


class RequestStream:
    """A submitted request: iterate it (``for`` or ``async for``) for ``Chunk``s; ``cancel()`` any time.

    The last chunk carries ``finish_reason`` and usage.  Cancelling a queued
    request removes it before anything is decoded for it; cancelling a running
    one frees its sequence at the engine's next step, and iterating further
    raises ``GenerationCancelled``.  Closing the stream (``close()``, breaking
    out of a ``with`` block, an ``async for`` whose task is cancelled) cancels too.
    """

    def __init__(
        self,
        request: GenerationRequest,
        limit: int,
        on_change: Callable[[RequestStream], None],
    ) -> None:
        self.request = request
        self.limit = limit
        self.cached_tokens = 0
        """Prompt tokens served from the prefix cache (known once the request is admitted)."""
        self.draft_tokens = 0
        """Speculative guesses verified so far, and how many of them were right."""
        self.draft_accepted = 0
        self._output = SequenceOutput(request, limit)
        self._on_change = on_change  # tells the engine that this stream was cancelled or drained
        self._lock = threading.Condition()
        self._tokens: deque[_Token | _Progress] = deque()
        self._end: tuple[str, BaseException | None] | None = None
        self._ready: deque[Chunk] = deque()
        self._held: list[int] = []  # ids of tokens whose text is still held back
        self._cancelled = False
        self._stopped = False  # the text ended (stop string or length): no more tokens wanted
        self._finished = False  # the final chunk has been produced
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._job: object = None  # the engine's record of this request
        self.wakeup: threading.Event | None = None
        """Set whenever new output arrives (lets one thread wait on several streams)."""

    def __del__(self) -> None:
        if not self._finished:  # dropped unread: free its sequence
            self._cancelled = True
            self._on_change(self)

    # -- the engine's side (decode thread) ------------------------------------------------
    @property
    def wanted(self) -> bool:
        """Whether the engine should keep generating for this request."""
        return not (self._cancelled or self._stopped)

    @property
    def backlog(self) -> int:
        """Tokens pushed but not yet read."""
        return len(self._tokens)

    def push(self, token: int, piece: bytes, logprob: TokenLogprob | None) -> None:
        """Append one generated token (call ``wake()`` after a step's pushes)."""
        self._tokens.append(_Token(token, piece, logprob))

    def progress(self, processed: int) -> None:
        """Note ``processed`` prompt tokens in the sequence (call ``wake()`` after a step's notes)."""
        self._tokens.append(_Progress(processed))

    def finish(self, reason: str, error: BaseException | None = None) -> None:
        """No more tokens will come: the sequence ended with ``reason`` or failed with ``error``."""
        with self._lock:
            if self._end is None:
                self._end = (reason, error)
        self.wake()

    def wake(self) -> None:
        """Wake the consumer, whether it waits in a thread or in an event loop."""
        wake_all((self,))

    # -- the consumer's side --------------------------------------------------------------
    def cancel(self) -> None:
        """Stop this request as soon as possible; safe from any thread, and to call twice."""
        if self._cancelled or self._finished:
            return
        self._cancelled = True
        self._on_change(self)
        self.wake()

    close = cancel

    @property
    def finished(self) -> bool:
        """Whether the final chunk (or the error) has been produced."""
        return self._finished

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called before the request finished."""
        return self._cancelled

    def __enter__(self) -> RequestStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __iter__(self) -> RequestStream:
        return self

    def __next__(self) -> Chunk:
        while True:
            chunk = self.poll()
            if chunk is not None:
                return chunk
            if self._finished:
                raise StopIteration
            with self._lock:
                if not self._tokens and self._end is None and not self._cancelled:
                    self._lock.wait()

    def share_event(self, event: asyncio.Event) -> None:
        """Set ``event`` (on the running event loop) whenever output arrives, instead of this stream's
        own: lets one task wait on several streams and ``poll()`` each."""
        self._loop = asyncio.get_running_loop()
        self._event = event

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Chunk:
        if self._event is None:
            self._event = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        try:
            while True:
                self._event.clear()
                chunk = self.poll()
                if chunk is not None:
                    return chunk
                if self._finished:
                    raise StopAsyncIteration
                await self._event.wait()
        except asyncio.CancelledError:
            self.cancel()
            raise

    async def aclose(self) -> None:
        """Cancel the request (for ``contextlib.aclosing`` and async generators)."""
        self.cancel()

    def poll(self) -> Chunk | None:
        """The next chunk if one is ready, without waiting; None while waiting or once finished."""
        ready, tokens = self._ready, self._tokens
        while not ready and not self._finished:
            if tokens:  # the decode thread only appends: popping needs no lock
                item = tokens.popleft()
                if len(tokens) + 1 >= MAX_BACKLOG:
                    self._on_change(self)  # a paused sequence may go on
                self._take(item)
            elif self._end is not None:  # set after the last token was appended
                reason, error = self._end
                if error is not None:
                    self._finished = True
                    raise error
                self._close(reason, "", [], [])
            elif self._cancelled:
                self._finished = True
                raise GenerationCancelled("generation was cancelled")
            else:
                return None
        return ready.popleft() if ready else None

    def _take(self, item: _Token | _Progress) -> None:
        if isinstance(item, _Progress):
            prompt = len(self.request.prompt_tokens)
            self._ready.append(
                Chunk(
                    "",
                    [],
                    prompt_tokens=prompt,
                    cached_tokens=self.cached_tokens,
                    prompt_processed=item.processed,
                )
            )
            return
        output = self._output
        if output.finish_reason is not None:
            return  # tokens generated after a stop string: never shown
        text, logprobs = output.feed(item.token, item.piece, item.logprob)
        if output.finish_reason is None:
            if text or logprobs:
                self._ready.append(Chunk(text, self._tokens_with(item.token), logprobs or None))
            else:
                self._held.append(item.token)  # its text is held back (half a character, a stop's start)
            return
        self._stopped = True
        self._on_change(self)
        self._close(output.finish_reason, text, [item.token], logprobs)

    def _tokens_with(self, token: int) -> list[int]:
        """``token`` after the ids whose text was held back, so every id reaches a chunk."""
        if not self._held:
            return [token]
        tokens, self._held = self._held, []
        tokens.append(token)
        return tokens

    def _close(self, reason: str, text: str, tokens: list[int], logprobs: list[TokenLogprob]) -> None:
        output = self._output
        tokens, self._held = self._held + tokens, []
        if text or logprobs:
            self._ready.append(Chunk(text, tokens, logprobs or None))
            tokens = []
        tail, more = output.end(reason)
        self._ready.append(
            Chunk(
                tail,
                tokens,
                more or None,
                output.finish_reason,
                len(self.request.prompt_tokens),
                len(output.tokens),
                self.cached_tokens,
                self.draft_tokens,
                self.draft_accepted,
            )
        )
        self._finished = True
