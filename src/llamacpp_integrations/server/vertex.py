"""Google Cloud Vertex AI's custom-container contract, as llama-server serves it.

Vertex AI starts a prediction container with ``AIP_MODE=PREDICTION`` and tells it, in
``AIP_*`` variables, the port to listen on and the paths of its predict and health routes.
A prediction request is ``{"instances": [...]}``; here each instance is one request to
another route of this server, named by ``@requestFormat`` (a path such as
``/v1/chat/completions``, or its camelCase name, ``chatCompletions``), and the answer is
``{"predictions": [...]}``, one per instance, in order: its JSON answer, or its error.
Instances run concurrently, each through the whole app (its key check included), so a
batch of chats shares the running batch as separate clients would.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from llamacpp_integrations.server.auth import require_api_key
from llamacpp_integrations.server.errors import APIError
from llamacpp_integrations.server.routes.info import health

MAX_INSTANCES = 128
"""Most instances in one prediction request."""

FORWARDED_HEADERS = ("authorization", "x-api-key")
"""Headers of the prediction request that each instance's request carries (the key)."""


@dataclass(frozen=True)
class VertexRoutes:
    """Where Vertex AI expects the predict and health routes, and the port (from ``AIP_*``)."""

    predict: str
    health: str | None
    port: int | None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> VertexRoutes | None:
        """The routes asked for, or None unless ``AIP_MODE`` is ``PREDICTION``."""
        env = os.environ if environ is None else environ
        if env.get("AIP_MODE") != "PREDICTION":
            return None
        port = env.get("AIP_HTTP_PORT")
        return cls(
            predict=_path(env.get("AIP_PREDICT_ROUTE")) or "/predict",
            health=_path(env.get("AIP_HEALTH_ROUTE")),
            port=int(port) if port else None,
        )


def _path(value: str | None) -> str | None:
    if not value:
        return None
    return value if value.startswith("/") else "/" + value


def format_name(path: str) -> str:
    """A route's camelCase name: ``/v1/chat/completions`` -> ``chatCompletions``."""
    words = [w for w in re.split(r"[/_-]+", path.removeprefix("/v1")) if w and not w.startswith("{")]
    return "".join(word if i == 0 else word[:1].upper() + word[1:] for i, word in enumerate(words))


def add_vertex_routes(app: FastAPI, routes: VertexRoutes, served: Sequence[BaseRoute]) -> None:
    """Serve Vertex AI's predict route (and its health route, if named) on ``app``, whose routes
    ``served`` are the ones instances may name."""
    targets: dict[str, str] = {}
    for route in served:
        if isinstance(route, APIRoute) and "POST" in (route.methods or ()) and "{" not in route.path:
            targets.setdefault(route.path, route.path)
            targets.setdefault(format_name(route.path), route.path)  # the first route of a name wins
    if routes.predict in targets:
        raise ValueError(f"AIP_PREDICT_ROUTE {routes.predict} is a route of the server already")

    async def predict(request: Request) -> JSONResponse:
        """``{"instances": [...]}`` -> ``{"predictions": [...]}``, one answer or error per instance."""
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "The body is not valid JSON") from None
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list):
            raise APIError(400, "The body must be an object with an 'instances' array", param="instances")
        if len(instances) > MAX_INSTANCES:
            raise APIError(400, f"At most {MAX_INSTANCES} instances per request", param="instances")
        headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vertex", timeout=None) as client:
            answers = await asyncio.gather(*(_one(client, targets, item, headers) for item in instances))
        return JSONResponse({"predictions": answers})

    app.add_api_route(
        routes.predict,
        predict,
        methods=["POST"],
        dependencies=[Depends(require_api_key)],
        tags=["vertex-ai"],
        include_in_schema=False,
    )
    if routes.health is not None and routes.health != "/health":
        app.add_api_route(routes.health, health, methods=["GET"], include_in_schema=False)


async def _one(
    client: httpx.AsyncClient, targets: Mapping[str, str], instance: Any, headers: Mapping[str, str]
) -> Any:
    """One instance's answer (never a stream), or its error object."""
    if not isinstance(instance, dict) or not isinstance(instance.get("@requestFormat"), str):
        return APIError(400, "Each instance must be an object with a string '@requestFormat'").body()
    payload = {key: value for key, value in instance.items() if key != "@requestFormat"}
    path = targets.get(instance["@requestFormat"])
    if path is None:
        return APIError(400, f"No route for @requestFormat {instance['@requestFormat']!r}").body()
    if "stream" in payload:
        payload["stream"] = False  # a prediction is one JSON answer
    response = await client.post(path, json=payload, headers=dict(headers))
    try:
        return response.json()
    except ValueError:
        return response.text
