"""One ``/v1/responses`` request run: the Responses stream or object, and llama-server's telemetry.

llama-server adds two extensions to a streamed response: ``return_progress`` (a
``response.in_progress`` event with ``prompt_progress`` as the prompt starts and after each
batch of it is read) and ``timings_per_token`` (its ``timings`` on the last event of each
batch); either one also puts ``timings`` on the final event.  They need the engine's chunks
(token counts, the prompt's cached part), so a request that asks for them reads its chunks
itself (``Telemetry``); any other request reads only the typed events, with no work per token
added.
"""

from __future__ import annotations

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
from llamacpp_native.api import openai_shapes
from llamacpp_native.engine.output import ChatOutput
from llamacpp_native.engine.request_stream import RequestStream
from llamacpp_native.events import Event, PromptProgress


class Telemetry:
    """A chat's engine chunks, counted as they pass: prompt progress and timings, llama-server's way."""

    def __init__(self, stream: RequestStream, timings: Timings, progress: bool, per_token: bool) -> None:
        self.stream = stream
        self.timings = timings
        self.progress = progress
        self.per_token = per_token
        self.predicted = 0

    @classmethod
    async def start(
        cls, lease: Lease, body: ResponsesRequest, chat: ChatCompletionRequest, record: RequestRecord
    ) -> tuple[ChatEvents, Telemetry]:
        """``ChatEvents.start`` for a request that asked for telemetry: the events, and their counts."""
        timings = Timings()
        try:
            kwargs = await llama_kwargs(lease, chat)
            if body.return_progress:
                kwargs["return_progress"] = True
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
                if chunk.prompt_processed is None:
                    self.timings.output()
                    self.predicted += len(chunk.tokens)
                yield output.feed(chunk)
        finally:
            stream.cancel()

    def render(self, renderer: ResponseRenderer, batch: list[Event]) -> list[dict[str, Any]]:
        """One batch's events with what was asked: a progress batch (alone in its batch, before any
        output) as ``response.in_progress``, any other with ``timings`` on its last event."""
        if batch and isinstance(batch[0], PromptProgress):
            report = batch[0]
            progress = openai_shapes.prompt_progress(report.total, report.cached, report.processed)
            progress["time_ms"] = int(self.timings.elapsed_ms())
            event = renderer.progress(progress)
            if self.per_token:
                event["timings"] = self.timings.at_progress(report.processed, report.cached)
            return [event]
        events = renderer.feed(batch)
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
