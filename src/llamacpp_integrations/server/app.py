"""``create_app(settings)``: the FastAPI application, wired (routes, errors, middleware, lifespan)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from llamacpp_integrations import __version__
from llamacpp_integrations.server.errors import install_handlers
from llamacpp_integrations.server.middleware import (
    LOCAL_ORIGINS,
    BodyLimitMiddleware,
    CorsMiddleware,
    DisabledEndpointsMiddleware,
    RequestLogMiddleware,
)
from llamacpp_integrations.server.routes import ROUTERS
from llamacpp_integrations.server.settings import ServerSettings
from llamacpp_integrations.server.state import ServerState
from llamacpp_integrations.server.vertex import VertexRoutes, add_vertex_routes

DESCRIPTION = """An OpenAI-compatible server for local GGUF models (llama.cpp).

Every request joins one running batch per model (continuous batching). Errors
always have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`."""


class _ServerApp(FastAPI):
    """FastAPI whose OpenAPI schema omits the automatic 422 answers: invalid input gets 400 here."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = super().openapi()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return super().openapi()


def create_app(settings: ServerSettings) -> FastAPI:
    """The server for ``settings``; models load when it starts (the default) or on first use (others).

    Raises ``ModelNotFoundError`` at once when a configured model file does not exist.
    """
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.startup()
        try:
            yield
        finally:
            await state.shutdown()

    app = _ServerApp(
        title="llamacpp-integrations server", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    app.state.server = state
    install_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    disabled: dict[str, str] = {}  # path -> the setting that turns it on
    if not settings.metrics_endpoint:
        disabled["/metrics"] = "metrics_endpoint"
    if not settings.slots_endpoint:
        disabled["/slots"] = "slots_endpoint"
    if disabled:  # inside CORS and the request log: the 501 gets CORS headers and is counted
        app.add_middleware(DisabledEndpointsMiddleware, disabled=disabled)
    origins = settings.origins_of(settings.cors_origins)
    if origins:  # around every answer (errors, 413 and 401 included); preflights answered before auth
        app.add_middleware(
            CorsMiddleware,
            allow_origins=[origin for origin in origins if origin != "localhost"],
            allow_origin_regex=LOCAL_ORIGINS if "localhost" in origins else None,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Retry-After"],
        )
    app.add_middleware(RequestLogMiddleware, metrics=state.metrics)  # outermost: sees every answer
    for router in ROUTERS:
        app.include_router(router)
    vertex = VertexRoutes.from_environment()
    if vertex is not None:  # AIP_MODE=PREDICTION: a Vertex AI prediction container
        add_vertex_routes(app, vertex, [route for router in ROUTERS for route in router.routes])
    return app
