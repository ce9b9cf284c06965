"""One completion or chat request on a leased model: a JSON response or an SSE stream.

The request is checked and queued in the engine before anything is sent, so
bad input (a prompt over the context included) is answered with a plain 400
even with ``stream: true``.  Whatever ends the request (its last token, an
error, the client going away) frees its slot and releases the model.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar, cast

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from llamacpp_integrations.schema import check_strict, parse_and_validate
from llamacpp_integrations.server.errors import CLIENT_CLOSED, APIError, api_error
from llamacpp_integrations.server.middleware import RequestRecord
from llamacpp_integrations.server.models import Lease
from llamacpp_integrations.server.schemas import ChatCompletionRequest, CompletionRequest
from llamacpp_integrations.server.timings import Timings
from llamacpp_native.api import choices, openai_shapes
from llamacpp_native.chat.continuation import opening_of, plan_continuation

T = TypeVar("T")

SHUTDOWN_GRACE_S = 5.0
"""On shutdown, how long a stream may take to send its last (error) event before it is cut."""


def _check_strict_schemas(body: ChatCompletionRequest) -> None:
    """A strict response format or tool must have no rule a grammar cannot enforce (GrammarError: 400)."""
    if body.response_format is not None and body.response_format.strict:
        check_strict(body.output_schema() or {}, "response_format.json_schema.schema")
    for tool in body.tools or []:
        if tool.function.strict:
            check_strict(tool.function.parameters or {}, f"tool {tool.function.name!r}")


def continued_opening(body: ChatCompletionRequest) -> str | None:
    """The text of the assistant turn ``body`` continues, or None when it opens a new one.

    What cannot be continued is a 400 naming the field (see ``plan_continuation``)."""
    last = [{"role": m.role, "tool_calls": m.tool_calls} for m in body.messages[-2:]]
    try:
        continuation, _ = plan_continuation(last, body.continue_final_message, body.add_generation_prompt)
    except ValueError as error:
        raise APIError(
            400, str(error), param="add_generation_prompt" if body.add_generation_prompt else "messages"
        ) from None
    return opening_of(body.messages[-1].as_llama(), continuation).content if continuation else None


async def llama_kwargs(lease: Lease, body: CompletionRequest | ChatCompletionRequest) -> dict[str, Any]:
    """The keyword arguments of ``Llama`` for ``body``: strict schemas and continuation checked,
    ``ignore_eos`` applied, and the model's default template variables (``--reasoning``) under
    the request's own."""
    if isinstance(body, ChatCompletionRequest):
        _check_strict_schemas(body)
        continued_opening(body)
    end_tokens = await lease.entry.end_tokens() if body.ignore_eos else []
    kwargs = body.llama_kwargs(end_tokens)
    defaults = lease.entry.settings.template_defaults()
    if isinstance(body, ChatCompletionRequest) and defaults:
        given = kwargs.get("chat_template_kwargs")
        kwargs["chat_template_kwargs"] = {**defaults, **given} if isinstance(given, dict) else defaults
    return kwargs


class Generation:
    """A started generation: iterate it as a response (``response()``) or SSE events (``events()``)."""

    def __init__(
        self,
        lease: Lease,
        source: AsyncGenerator[dict[str, Any], None],
        body: CompletionRequest | ChatCompletionRequest,
        record: RequestRecord,
        started: float | None = None,
    ) -> None:
        self.lease = lease
        self.chat = isinstance(body, ChatCompletionRequest)
        self.usage: dict[str, Any] = {}
        self.timings = Timings(started)
        self.choices = body.choices if isinstance(body, CompletionRequest) else body.n or 1
        """Choices in the response: ``n`` per prompt (several prompts: a completion batch)."""
        # Chunks sent before any token: each choice's role chunk (chat), or echoed prompt.
        opens = self.chat or (isinstance(body, CompletionRequest) and body.echo)
        self._openers = self.choices if opens else 0
        self._seen = 0
        self._source = source
        self._record = record
        self._include_usage = body.include_usage
        self._progress = body.stream and body.return_progress
        self._with_logprobs = isinstance(body, CompletionRequest) and body.logprobs is not None
        self._check: Callable[[str], Any] | None = None
        self._opening = ""
        """The continued assistant turn's text, which a strict schema checks the reply after."""
        if isinstance(body, ChatCompletionRequest) and body.response_format and body.response_format.strict:
            self._check = partial(parse_and_validate, schema=body.output_schema())
            self._opening = continued_opening(body) or ""
        self._text: dict[int, list[str]] = {}  # per choice
        self._finished = self._failed = self._closed = False

    @classmethod
    async def start(
        cls, lease: Lease, body: CompletionRequest | ChatCompletionRequest, record: RequestRecord
    ) -> Generation:
        """Check ``body`` and queue it on ``lease``'s model; raises (nothing sent yet) if it cannot run."""
        started = time.perf_counter()
        try:
            kwargs = await llama_kwargs(lease, body)
            llama = lease.llama
            chat = isinstance(body, ChatCompletionRequest)
            create = llama.acreate_chat_completion if chat else llama.acreate_completion
            # Rendering and tokenizing run in a worker thread inside create(); the queued
            # request is then awaited here, on the event loop, like any stream.
            source = await create(stream=True, **kwargs)
        except BaseException:
            lease.release()
            raise
        return cls(lease, cast(AsyncGenerator[dict[str, Any], None], source), body, record, started)

    def _take(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """One engine chunk as the client sees it: named after the alias, usage kept aside, and
        llama-server's ``timings`` on the chunk that finishes."""
        chunk["model"] = self.lease.alias
        if self._progress and "prompt_progress" in chunk:  # neither an opener nor output
            chunk["prompt_progress"]["time_ms"] = int(self.timings.elapsed_ms())
            return chunk
        usage = chunk.pop("usage", None)
        if usage is not None:
            self.usage = usage
            self._record.prompt_tokens = usage["prompt_tokens"]
            self._record.completion_tokens = usage["completion_tokens"]
        self._seen += 1
        if self._seen > self._openers:
            self.timings.output()
        if chunk["choices"] and chunk["choices"][0]["finish_reason"] is not None and usage is not None:
            self.timings.end()  # the last choice to end (each choice ends, but only the last has usage)
            chunk["timings"] = self.timings_json()
        if self._check is not None:
            choice = chunk["choices"][0]
            text = self._text.setdefault(choice["index"], [])
            text.append(choice["delta"].get("content") or "")
            if choice["finish_reason"] == "stop":
                # SchemaValidationError: the reply broke a strict schema
                self._check(self._opening + "".join(text))
        return chunk

    async def response(self) -> dict[str, Any]:
        """The whole answer as one ``chat.completion`` or ``text_completion``."""
        try:
            chunks = [self._take(chunk) async for chunk in self._source]
            self._finished = True
        finally:
            await self.close()
        one = self._collect_one
        result = choices.collect(chunks, one) if self.choices > 1 else one(chunks)
        result["timings"] = self.timings_json()
        return result

    def _collect_one(self, chunks: list[dict[str, Any]]) -> dict[str, Any]:
        """One choice's chunks as a ``chat.completion`` or ``text_completion`` with the request's usage."""
        if self.chat:
            return openai_shapes.collect_chat(chunks, self.usage)
        return openai_shapes.collect_completion(chunks, self._with_logprobs, self.usage)

    def timings_json(self) -> dict[str, Any]:
        """llama-server's ``timings`` of this generation (so far)."""
        usage = self.usage
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        details = usage.get("completion_tokens_details") or {}
        accepted = details.get("accepted_prediction_tokens", 0)
        drafted = (accepted + details.get("rejected_prediction_tokens", 0), accepted)
        return self.timings.as_json(
            usage.get("prompt_tokens", 0), cached, usage.get("completion_tokens", 0), drafted
        )

    async def events(self) -> AsyncIterator[str]:
        """SSE data: each chunk, a usage chunk if asked, then ``[DONE]``; a late error is the last event."""
        last: dict[str, Any] | None = None
        try:
            async for chunk in self._source:
                last = self._take(chunk)
                yield _json(_without_empty_content(last) if self.chat else last)
            self._finished = True
            if self._include_usage and last is not None:
                yield _json({**last, "choices": [], "usage": self.usage})
            yield "[DONE]"
        except Exception as error:  # the status line is sent: the error becomes the final event
            self._failed = True
            yield _json(api_error(error).body())
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop generating if still running and release the model (safe to call again)."""
        if self._closed:
            return
        self._closed = True
        self._record.cancelled = not (self._finished or self._failed)
        if self.usage:
            self.timings.end()
            self._record.timings.append(self.timings_json())
        try:
            await self._source.aclose()
        finally:
            self.lease.release()


class Streamable(Protocol):
    """A started generation that can be sent as SSE events and closed (idempotently)."""

    def events(self) -> AsyncIterator[str | ServerSentEvent]:
        """The ``data:`` payloads (or whole events, where they are named), in order."""
        ...

    async def close(self) -> None:
        """Stop generating if still running and release the model."""
        ...


class EventStream(EventSourceResponse):
    """The SSE response of a generation; closes it however the response ends, even unstarted."""

    def __init__(self, generation: Streamable) -> None:
        super().__init__(generation.events(), sep="\n", shutdown_grace_period=SHUTDOWN_GRACE_S)
        self.generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.generation.close()


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (then a 499 ``APIError``)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (watcher, task):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise APIError(CLIENT_CLOSED, "The client closed the connection", code="client_closed_request")
    return task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _without_empty_content(chunk: dict[str, Any]) -> dict[str, Any]:
    """A chat chunk whose deltas carry no ``content: ""``: null beside the role, else left out.

    As llama-server streams them (and OpenAI's last chunk, ``delta: {}``); clients read a
    missing or null content as no text, and some of them check that a content delta is not empty.
    """
    for choice in chunk["choices"]:
        delta = choice.get("delta")
        if delta and delta.get("content") == "":
            if "role" in delta:
                delta["content"] = None
            else:
                del delta["content"]
    return chunk


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
