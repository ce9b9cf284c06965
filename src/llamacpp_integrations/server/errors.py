"""Every error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

``APIError`` is what the server raises itself; ``api_error`` maps any other
exception (the engine's typed errors included) to one; ``install_handlers``
makes FastAPI answer with that shape everywhere (400 instead of 422, and a
last-resort 500 that still has the shape).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from llamacpp_native.errors import (
    ClosedError,
    ContextOverflowError,
    GenerationCancelled,
    LlamaError,
    ModelLoadError,
    NotSupportedError,
    RpcServerError,
)

CLIENT_CLOSED = 499
"""Status recorded (nginx's convention) when the client went away before the answer."""


class ErrorDetail(BaseModel):
    """The fields of an OpenAI error."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """``{"error": {...}}``: the body of every error response."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed or invalid request (never 422)."},
    401: {"model": ErrorBody, "description": "Missing or wrong API key."},
    404: {"model": ErrorBody, "description": "Unknown model."},
    413: {"model": ErrorBody, "description": "Request body over the size limit."},
    503: {"model": ErrorBody, "description": "Queue full (with Retry-After), or shutting down."},
}
"""Error responses, for the OpenAPI description of the endpoints."""


class APIError(Exception):
    """An error answered with ``status`` and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        """Fields added to the error object after OpenAI's four (llama-server's ``n_ctx``, ...)."""

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {...}}``."""
        fields = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": {**fields, **self.extra}}

    def response(self) -> JSONResponse:
        """This error as a response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def model_not_found(name: str | None) -> APIError:
    """404 for a ``model`` the server does not serve."""
    return APIError(
        404, f"The model {name!r} does not exist or is not served here", param="model", code="model_not_found"
    )


RETRY_AFTER_S = 1
"""What a refused client is told to wait: a slot frees as soon as any reply ends."""


def server_overloaded() -> APIError:
    """503 with ``Retry-After`` when a model's queue is full."""
    return APIError(
        503,
        "The server is overloaded: too many requests are waiting for this model; retry shortly",
        "server_error",
        code="server_overloaded",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def shutting_down() -> APIError:
    """503 while the server shuts down."""
    return APIError(503, "The server is shutting down", "server_error", code="server_shutting_down")


_OVERFLOW_COUNTS = re.compile(r"has (\d+) tokens but the context window is (\d+) tokens")


def context_overflow(error: ContextOverflowError) -> APIError:
    """400 for a prompt over the context: OpenAI's code ``context_length_exceeded`` with llama-server's
    type ``exceed_context_size_error`` and, where the engine's message states them, its ``n_prompt_tokens``
    and ``n_ctx`` (the tokens one request may use here: the whole shared context)."""
    found = _OVERFLOW_COUNTS.search(str(error))
    extra = {"n_prompt_tokens": int(found[1]), "n_ctx": int(found[2])} if found else None
    return APIError(400, str(error), "exceed_context_size_error", code="context_length_exceeded", extra=extra)


def api_error(error: BaseException) -> APIError:
    """The OpenAI-shaped error for any exception (typed engine errors first)."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, RequestValidationError):  # 400 naming the field, as the handler answers it
        return _validation_error(error)
    if isinstance(error, HTTPException):  # a body that cannot be read, ...
        return _http_error(error)
    if isinstance(error, ContextOverflowError):
        return context_overflow(error)
    if isinstance(error, ClosedError):
        return shutting_down()
    if isinstance(error, GenerationCancelled):
        return APIError(CLIENT_CLOSED, "The request was cancelled", code="request_cancelled")
    if isinstance(error, RpcServerError):  # a worker of --rpc is down or unreachable
        return APIError(503, f"An RPC worker is unavailable: {error}", "server_error", code="rpc_unavailable")
    if isinstance(error, ModelLoadError):
        return APIError(
            500, f"The model could not be loaded: {error}", "server_error", code="model_load_failed"
        )
    if isinstance(error, NotSupportedError):  # a request the model cannot serve: not worth a retry
        return APIError(400, str(error), code="not_supported")
    if isinstance(error, (ValueError, TypeError)):  # GrammarError, TokenizeError, ChatTemplateError, ...
        return APIError(400, str(error) or type(error).__name__)
    if isinstance(error, LlamaError):
        return APIError(500, f"{type(error).__name__}: {error}", "server_error")
    return APIError(500, "Internal server error (the server log has the details)", "server_error")


def _validation_error(error: RequestValidationError) -> APIError:
    first = error.errors()[0] if error.errors() else {}
    location = first.get("loc", ())
    if first.get("type") == "json_invalid":
        return APIError(400, f"The request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
    if len(location) <= 1 and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        return APIError(400, "The request body must be a JSON object (Content-Type: application/json)")
    param = _param(location)
    message = first.get("msg", "invalid request")
    return APIError(400, f"{param}: {message}" if param else message, param=param)


_UNION_TAGS = frozenset({"str", "int", "float", "bool"})


def _param(location: Sequence[Any]) -> str | None:
    """The field a validation error names, as ``messages.0.role`` (pydantic's union tags left out)."""
    parts = [
        str(part)
        for part in location[1:]  # after "body"
        if isinstance(part, int) or (part.isidentifier() and part.islower() and part not in _UNION_TAGS)
    ]
    return ".".join(parts) or None


async def _handle_validation(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return _validation_error(error).response()


def _http_error(error: HTTPException) -> APIError:
    kind = "invalid_request_error" if error.status_code < 500 else "server_error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
    return APIError(error.status_code, str(error.detail), kind, code=code, headers=error.headers)


async def _handle_http(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return _http_error(error).response()


async def _handle_any(_: Request, error: Exception) -> JSONResponse:
    return api_error(error).response()


def install_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape: 400 for bad requests (never 422), typed engine errors mapped."""
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(HTTPException, _handle_http)
    for kind in (APIError, LlamaError, ValueError, TypeError):
        app.add_exception_handler(kind, _handle_any)
    # The last resort: Starlette answers with this, then re-raises so the server logs the traceback.
    app.add_exception_handler(Exception, _handle_any)
