"""ASGI middleware: the request body limit (413), CORS, endpoints turned off (501), and one log line
plus metrics per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamacpp_integrations.server.errors import CLIENT_CLOSED, APIError
from llamacpp_integrations.server.metrics import Metrics

logger = logging.getLogger("llamacpp_integrations.server.access")

KNOWN_ENDPOINTS = frozenset(
    {
        "/health",
        "/metrics",
        "/tokenize",
        "/detokenize",
        "/v1/models",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/models",
        "/chat/completions",
        "/completion",
        "/completions",
        "/embedding",
        "/embeddings",
        "/apply-template",
        "/props",
        "/slots",
        "/v1/responses",
        "/responses",
        "/v1/responses/input_tokens",
        "/responses/input_tokens",
        "/v1/chat/completions/input_tokens",
        "/chat/completions/input_tokens",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/rerank",
        "/rerank",
        "/v1/reranking",
        "/reranking",
        "/infill",
    }
)


@dataclass
class RequestRecord:
    """What a route reports about its request, for the log line and the metrics."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cancelled: bool = False
    timings: list[Mapping[str, Any]] = field(default_factory=list)
    """llama-server's ``timings`` of each generation the request ran (``Timings.as_json``), for the
    prompt and generation times and throughputs of /metrics."""


def request_record(scope: Scope) -> RequestRecord:
    """The record of the request in ``scope`` (created by ``RequestLogMiddleware``)."""
    record = scope.setdefault("state", {}).setdefault("record", RequestRecord())
    assert isinstance(record, RequestRecord)
    return record


class RequestLogMiddleware:
    """Logs one line per request (method, path, status, tokens, latency; never the prompt) and counts it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = request_record(scope)
        status = 500  # if the app raises before it answers

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if record.cancelled:
                status = CLIENT_CLOSED
                self.metrics.record_cancelled()
            path = scope["path"]
            self.metrics.record_request(path if path in KNOWN_ENDPOINTS else "other", status)
            self.metrics.record_tokens(record.prompt_tokens, record.completion_tokens)
            self.metrics.record_timings(record.timings)
            logger.info(
                "%s %s %d tokens=%d+%d %.3fs",
                scope["method"],
                path,
                status,
                record.prompt_tokens,
                record.completion_tokens,
                time.perf_counter() - started,
            )


class BodyLimitMiddleware:
    """Answers 413 (OpenAI's error shape) to request bodies over ``max_bytes``, declared or sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        # Read the body here (it is small by then) so that the limit holds for chunked uploads too.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before it finished sending: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: waits for the client to disconnect

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(
            413,
            f"The request body is larger than the limit of {self.max_bytes} bytes",
            code="request_too_large",
            headers={"Connection": "close"},
        )
        await error.response()(scope, receive, send)


class DisabledEndpointsMiddleware:
    """Answers 501 (``not_supported_error``, as llama-server) on the paths the server was started without.

    ``disabled`` maps each path to the setting that turns it on, named in the message.
    """

    def __init__(self, app: ASGIApp, disabled: Mapping[str, str]) -> None:
        self.app = app
        self.disabled = dict(disabled)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        setting = self.disabled.get(scope["path"]) if scope["type"] == "http" else None
        if setting is None:
            await self.app(scope, receive, send)
            return
        error = APIError(
            501,
            f"This server does not serve {scope['path']}; start it with --{setting} true",
            "not_supported_error",
            code="endpoint_disabled",
        )
        await error.response()(scope, receive, send)


LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"
"""The origins ``--cors_origins localhost`` allows: pages served from this machine, on any port."""


class CorsMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflight has OpenAI's error shape (still 400)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        """The preflight's answer: 200, or 400 naming what is not allowed (origin, method, headers)."""
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        kept = {k: v for k, v in response.headers.items() if k.startswith("access-control-") or k == "vary"}
        message = bytes(response.body).decode()  # "Disallowed CORS origin, method"
        return APIError(400, message, code="cors_not_allowed", headers=kept).response()
