"""One ``/v1/responses`` request run: the Responses stream or object, and llama-server's telemetry.

llama-server adds two extensions to a streamed response: ``return_progress`` (a
``response.in_progress`` event with ``prompt_progress``) and ``timings_per_token`` (its
``timings`` on the last event of each batch); either one also puts ``timings`` on the
final event.  They need the engine's chunks (token counts, the prompt's cached part), so a
request that asks for them reads its chunks itself (``Telemetry``); any other request reads
only the typed events, with no work per token added.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent

from llamacpp_integrations.server.chat_events import ChatEvents, named_event
from llamacpp_integrations.server.errors import api_error
from llamacpp_integrations.server.generation import llama_kwargs
from llamacpp_integrations.server.middleware import RequestRecord
from llamacpp_integrations.server.models import Lease
from llamacpp_integrations.server.openai_responses import (
    ResponseRenderer,
    ResponsesRequest,
    ResponseStore,
    StoredResponse,
)
from llamacpp_integrations.server.schemas import ChatCompletionRequest
from llamacpp_integrations.server.timings import Timings
from llamacpp_native.engine.output import ChatOutput
from llamacpp_native.engine.request_stream import RequestStream
from llamacpp_native.events import Event


class Telemetry:
    """A chat's engine chunks, counted as they pass: prompt progress and timings, llama-server's way."""

    def __init__(self, stream: RequestStream, timings: Timings, progress: bool, per_token: bool) -> None:
        self.stream = stream
        self.timings = timings
        self.progress = progress
        self.per_token = per_token
        self.predicted = 0
        self._progress_sent = False

    @classmethod
    async def start(
        cls, lease: Lease, body: ResponsesRequest, chat: ChatCompletionRequest, record: RequestRecord
    ) -> tuple[ChatEvents, Telemetry]:
        """``ChatEvents.start`` for a request that asked for telemetry: the events, and their counts."""
        timings = Timings()
        try:
            kwargs = await llama_kwargs(lease, chat)
            stream, output = await lease.llama.achat_stream(**kwargs)
        except BaseException:
            lease.release()
            raise
        telemetry = cls(stream, timings, body.return_progress, body.timings_per_token)
        return ChatEvents(lease, telemetry._batches(output), record, kwargs, timings.started), telemetry

    async def _batches(self, output: ChatOutput) -> AsyncGenerator[list[Event], None]:
        stream = self.stream
        try:
            async for chunk in stream:
                self.timings.output()
                self.predicted += len(chunk.tokens)
                yield output.feed(chunk)
        finally:
            stream.cancel()

    def render(self, renderer: ResponseRenderer, batch: list[Event]) -> list[dict[str, Any]]:
        """One batch's events with what was asked: the prompt's progress once it is read (before the
        first batch's events), then ``timings`` on the batch's last event."""
        events: list[dict[str, Any]] = []
        if self.progress and not self._progress_sent:
            self._progress_sent = True
            total = len(self.stream.request.prompt_tokens)
            elapsed_ms = (time.perf_counter() - self.timings.started) * 1000.0
            progress = {
                "total": total,
                "cache": self.stream.cached_tokens,
                "processed": total,
                "time_ms": int(elapsed_ms),
            }
            events.append(renderer.progress(progress))
        events += renderer.feed(batch)
        if self.per_token and events:
            events[-1]["timings"] = self.timings_json()
        return events

    def timings_json(self) -> dict[str, Any]:
        """llama-server's ``timings`` so far."""
        stream = self.stream
        drafted = (stream.draft_tokens, stream.draft_accepted)
        return self.timings.as_json(
            len(stream.request.prompt_tokens), stream.cached_tokens, self.predicted, drafted
        )


class ResponseRun:
    """One ``/v1/responses`` request: its events (SSE) or its response object; kept when it ends."""

    def __init__(
        self,
        chat: ChatEvents,
        body: ResponsesRequest,
        conversation: list[dict[str, Any]],
        store: ResponseStore,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.chat = chat
        self.body = body
        self.renderer = ResponseRenderer.for_request(body, chat.lease.alias)
        self.id: str = self.renderer.response["id"]
        self.telemetry = telemetry
        self._conversation = conversation
        self._store = store

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        renderer, telemetry = self.renderer, self.telemetry
        for event in renderer.start():
            yield event
        async for batch in self.chat.batches():
            events = renderer.feed(batch) if telemetry is None else telemetry.render(renderer, batch)
            for event in events:
                yield event
        events = renderer.finish()
        if telemetry is not None:
            telemetry.timings.end()
            events[-1]["timings"] = telemetry.timings_json()
        for event in events:
            yield event
        if self.body.store:
            conversation = self._conversation + renderer.messages()
            self._store.put(self.id, StoredResponse(renderer.response, conversation))

    async def response(self) -> dict[str, Any]:
        """The finished response object."""
        try:
            async for _ in self._events():
                pass
        finally:
            await self.close()
        return self.renderer.response

    async def events(self) -> AsyncIterator[ServerSentEvent]:
        """The Responses stream; an error after it began is its last event, ``response.failed``."""
        try:
            async for event in self._events():
                yield named_event(event)
        except Exception as error:
            for event in self.renderer.fail(api_error(error)):
                yield named_event(event)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop generating if still running and release the model (safe to call again)."""
        await self.chat.close()
