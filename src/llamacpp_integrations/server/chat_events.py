"""A chat on a leased model, read as typed events: the core of the Responses and Anthropic routes.

Each of those APIs turns its request into a ``ChatCompletionRequest`` (one place checks
messages, tools, schemas and sampling for every front end), starts it here, and renders
the batches of ``llamacpp_native.events`` in its own module.  As for the OpenAI chat
route, the request is checked and queued before anything is sent, and whatever ends it
(its last token, an error, the client going away) frees its slot and releases the model.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from fastapi.responses import JSONResponse, Response
from sse_starlette import ServerSentEvent
from starlette.requests import Request

from llamacpp_integrations.server.generation import EventStream, Streamable, llama_kwargs, until_disconnected
from llamacpp_integrations.server.middleware import RequestRecord
from llamacpp_integrations.server.models import Lease
from llamacpp_integrations.server.schemas import ChatCompletionRequest
from llamacpp_integrations.server.state import server_state
from llamacpp_integrations.server.timings import Timings
from llamacpp_native import Llama
from llamacpp_native.events import Event, PromptProgress, Usage

RENDER_OPTIONS = (
    "tools",
    "tool_choice",
    "response_format",
    "parallel_tool_calls",
    "reasoning_format",
    "chat_template_kwargs",
    "continue_final_message",
    "add_generation_prompt",
)
"""The keyword arguments of ``Llama.render_chat`` among those of a chat."""


class ChatEvents:
    """A started chat: ``batches()`` yields its event batches; ``close()`` ends it (idempotently)."""

    def __init__(
        self,
        lease: Lease,
        source: AsyncGenerator[list[Event], None],
        record: RequestRecord,
        kwargs: dict[str, Any],
        started: float | None = None,
    ) -> None:
        self.lease = lease
        self.record = record
        self.timings = Timings(started)
        self._usage: Usage | None = None
        self._source = source
        self._kwargs = kwargs
        self._finished = self._failed = self._stopped = self._closed = False

    @classmethod
    async def start(cls, lease: Lease, body: ChatCompletionRequest, record: RequestRecord) -> ChatEvents:
        """Check ``body`` and queue it on ``lease``'s model; raises (nothing sent yet) if it cannot run."""
        started = time.perf_counter()
        try:
            kwargs = await llama_kwargs(lease, body)
            source = await lease.llama.achat_events(**kwargs)  # renders and tokenizes in a worker thread
        except BaseException:
            lease.release()
            raise
        return cls(lease, source, record, kwargs, started)

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        """The reply's event batches, one per engine chunk; usage and timings are noted for the request
        log and the metrics."""
        try:
            timings = self.timings
            async for batch in self._source:
                if timings.first_output is None and not (batch and isinstance(batch[0], PromptProgress)):
                    timings.output()  # no check per batch once the first output is noted
                for event in batch:
                    if isinstance(event, Usage):
                        self.record.prompt_tokens = event.prompt_tokens
                        self.record.completion_tokens = event.completion_tokens
                        self._usage = event
                yield batch
        except Exception:
            self._failed = True
            raise
        self._finished = True

    async def stop(self) -> None:
        """End the reply here: the renderer found its end (a stop sequence).  The model stays
        leased, for ``prompt_tokens()``, until ``close()``."""
        self._stopped = True
        await self._source.aclose()

    async def prompt_tokens(self) -> int:
        """The prompt's tokens, counted again: a reply ended by ``stop()`` never gets its ``Usage``."""
        return await asyncio.to_thread(count_prompt_tokens, self.lease.llama, self._kwargs)

    async def close(self) -> None:
        """Stop generating if still running and release the model (safe to call again)."""
        if self._closed:
            return
        self._closed = True
        self.record.cancelled = not (self._finished or self._failed or self._stopped)
        usage = self._usage
        if usage is not None:
            self.timings.end()
            drafted = (usage.draft_tokens, usage.draft_accepted)
            counts = (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)
            self.record.timings.append(self.timings.as_json(*counts, drafted))
        try:
            await self._source.aclose()
        finally:
            self.lease.release()


def render_prompt(llama: Llama, kwargs: Mapping[str, Any]) -> str:
    """The prompt text a chat (``llama_kwargs``' result) is rendered to.  Blocking: run it in a thread."""
    options = {name: kwargs[name] for name in RENDER_OPTIONS if name in kwargs}
    return llama.render_chat(kwargs["messages"], **options).prompt


def count_prompt_tokens(llama: Llama, kwargs: Mapping[str, Any]) -> int:
    """The prompt tokens of a chat (``llama_kwargs``' result), as its ``Usage.prompt_tokens`` counts them.

    Blocking (renders, tokenizes): run it in a worker thread.
    """
    options = {name: kwargs[name] for name in RENDER_OPTIONS if name in kwargs}
    rendered = llama.render_chat(kwargs["messages"], **options)
    return len(llama.chat_request(rendered).prompt_tokens)


async def input_tokens(request: Request, body: ChatCompletionRequest) -> dict[str, int]:
    """``{"input_tokens": n}``: the prompt tokens ``body`` would use on its model."""
    lease = await server_state(request).registry.acquire(body.model)
    try:
        kwargs = await llama_kwargs(lease, body)
        return {"input_tokens": await asyncio.to_thread(count_prompt_tokens, lease.llama, kwargs)}
    finally:
        lease.release()


class Run(Streamable, Protocol):
    """A started request of one API: its SSE events, or its whole answer as JSON."""

    async def response(self) -> dict[str, Any]:
        """The whole answer (the run is closed after)."""
        ...


async def answer(request: Request, run: Run, stream: bool) -> Response:
    """``run`` as SSE events, or as one JSON object unless the client goes away first."""
    if stream:
        return EventStream(run)
    try:
        return JSONResponse(await until_disconnected(request, run.response()))
    finally:
        await run.close()


def named_event(payload: dict[str, Any]) -> ServerSentEvent:
    """``payload`` as an SSE event named after its ``type`` (as the Responses and Anthropic streams are)."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return ServerSentEvent(data, event=payload["type"], sep="\n")
