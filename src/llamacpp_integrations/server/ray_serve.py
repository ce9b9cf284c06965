"""Ray Serve: N replicas of the server behind Ray's HTTP proxy (``pip install 'llamacpp-integrations[ray]'``).

``python -m llamacpp_integrations.server.ray_serve --model PATH --replicas 2 --replica_cpus 4`` takes
every flag of ``python -m llamacpp_integrations.server`` plus the Ray ones; ``--host`` and ``--port``
are those of Ray's proxy.  Each replica is a whole server (its own models, slots, prefix cache,
``/health`` and ``/metrics``) and tags its answers with the ``x-llamacpp-replica`` header.
From Python: ``start(ServerSettings(model=PATH), ReplicaOptions(replicas=2))``, later ``stop()``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamacpp_integrations._extras import require_extra

require_extra("ray", "ray", "ray.serve")

import ray  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from ray import serve  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from llamacpp_integrations.server.__main__ import security_warning  # noqa: E402
from llamacpp_integrations.server.app import create_app  # noqa: E402
from llamacpp_integrations.server.settings import ServerSettings, build_parser, parse_settings  # noqa: E402
from llamacpp_integrations.server.state import ServerState  # noqa: E402
from llamacpp_native.errors import ModelNotFoundError  # noqa: E402

logger = logging.getLogger("llamacpp_integrations.server")

REPLICA_HEADER = "x-llamacpp-replica"
"""Response header naming the replica that answered (Ray's replica id)."""

_PATH_FIELDS = ("model", "mmproj", "chat_template_file", "media_path")
"""Settings that name local files: made absolute, since a replica's working directory is Ray's."""


@dataclass(frozen=True)
class ReplicaOptions:
    """How Ray runs the server: how many replicas, what each reserves, where the app is mounted."""

    replicas: int = 1
    replica_cpus: float = 1.0
    """CPUs Ray reserves per replica; also its threads when the settings name none."""
    replica_gpus: float = 0.0
    """GPUs per replica (Ray sets each replica's visible devices); pair with ``n_gpu_layers``."""
    max_ongoing_requests: int | None = None
    """Requests one replica takes at once; beyond it Ray's router holds them (default: its slots)."""
    app_name: str = "llamacpp-server"
    route_prefix: str = "/"


def replica_settings(settings: ServerSettings, options: ReplicaOptions) -> ServerSettings:
    """``settings`` as each replica runs them: absolute paths, and threads that fit its CPUs.

    Raises ``ModelNotFoundError`` here, before Ray starts anything, when a model file is missing.
    """
    threads = max(1, round(options.replica_cpus))
    models = []
    for model in settings.models:
        update = _absolute_paths(model.model_dump())
        if model.n_threads is None:
            update["n_threads"] = threads
        models.append(model.model_copy(update=update))
    update = {**_absolute_paths(settings.model_dump()), "models": models}
    if settings.n_threads is None:
        update["n_threads"] = threads
    resolved = settings.model_copy(update=update)
    for model in resolved.model_list():
        if not Path(model.model).is_file():
            raise ModelNotFoundError(f"model file not found: {model.model}")
    return resolved


def _absolute_paths(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: str(Path(fields[name]).resolve()) for name in _PATH_FIELDS if fields.get(name) is not None}


class _ReplicaHeader:
    """ASGI middleware adding ``x-llamacpp-replica: <id>`` to every answer of this replica."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode("latin-1"), replica.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, tagged)


def _replica_app(fields: dict[str, Any]) -> FastAPI:
    """The server app of one replica, built inside the replica from plain settings."""
    app = create_app(ServerSettings(**fields))
    app.add_middleware(_ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
    return app


class _Replica:
    """One server replica (Ray adds the app); unhealthy once its model has failed to load."""

    def check_health(self) -> None:
        state = getattr(getattr(self, "app", None), "state", None)
        server = getattr(state, "server", None)
        if isinstance(server, ServerState):
            error = server.health_error()
            if error is not None and error.code == "model_load_failed":
                raise RuntimeError(error.message)


def deployment(settings: ServerSettings, options: ReplicaOptions | None = None) -> serve.Application:
    """A Ray Serve application of ``options.replicas`` servers for ``settings``, for ``serve.run``."""
    options = options or ReplicaOptions()
    fields = replica_settings(settings, options).model_dump()

    def build() -> FastAPI:  # runs in each replica; Ray pickles it with ``fields``
        return _replica_app(fields)

    replica = serve.deployment(
        name="LlamaCppServer",
        num_replicas=options.replicas,
        max_ongoing_requests=options.max_ongoing_requests or settings.n_parallel,
        ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
    )(serve.ingress(build)(_Replica))
    return replica.bind()


def start(
    settings: ServerSettings, options: ReplicaOptions | None = None, ray_address: str | None = None
) -> None:
    """Deploy the replicas behind Ray's proxy on ``settings.host:settings.port``; returns once they answer.

    Joins the Ray cluster already initialised in this process, else ``ray_address`` (or
    ``RAY_ADDRESS``), else starts a local one.
    """
    options = options or ReplicaOptions()
    application = deployment(settings, options)
    warning = security_warning(settings)
    if warning is not None:
        logger.warning(warning)
    if not ray.is_initialized():
        ray.init(address=ray_address)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application, name=options.app_name, route_prefix=options.route_prefix, blocking=False)
    logger.info(
        "serving %d replica(s) at http://%s:%d%s",
        options.replicas,
        settings.host,
        settings.port,
        options.route_prefix,
    )


def stop(app_name: str = ReplicaOptions.app_name) -> None:
    """Remove the replicas; Serve itself is shut down when no other application is left on it."""
    serve.delete(app_name)
    if not serve.status().applications:
        serve.shutdown()


def _add_ray_flags(add_argument: Callable[..., Any]) -> None:
    defaults = ReplicaOptions()
    flags: list[tuple[str, type, Any, str]] = [
        ("replicas", int, defaults.replicas, "Server replicas Ray runs."),
        ("replica_cpus", float, defaults.replica_cpus, "CPUs per replica; its threads unless --n_threads."),
        ("replica_gpus", float, defaults.replica_gpus, "GPUs per replica (with --n_gpu_layers)."),
        ("max_ongoing_requests", int, None, "Requests a replica takes at once (default: --n_parallel)."),
        ("app_name", str, defaults.app_name, "Name of the Ray Serve application."),
        ("route_prefix", str, defaults.route_prefix, "Path the server is mounted at on Ray's proxy."),
        ("ray_address", str, None, "Ray cluster to join (default: RAY_ADDRESS, else a new local one)."),
    ]
    for name, kind, default, help_text in flags:
        spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        add_argument(*spellings, dest=name, type=kind, default=default, help=help_text)


def parse_args(argv: Sequence[str] | None = None) -> tuple[ServerSettings, ReplicaOptions, str | None]:
    """The server's settings, the replica options and the Ray address from the command line."""
    full = build_parser()
    full.prog = "python -m llamacpp_integrations.server.ray_serve"
    _add_ray_flags(full.add_argument_group("Ray Serve").add_argument)
    full.parse_args(argv)  # --help and unknown flags, with every flag listed
    ray_only = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_ray_flags(ray_only.add_argument)
    given, rest = ray_only.parse_known_args(argv)
    options = ReplicaOptions(**{k: v for k, v in vars(given).items() if k != "ray_address"})
    return parse_settings(rest), options, given.ray_address


def main(argv: Sequence[str] | None = None) -> None:
    """Start the replicas, serve until SIGINT or SIGTERM, then remove them."""
    settings, options, ray_address = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        replica_settings(settings, options)
    except ModelNotFoundError as error:
        sys.exit(f"error: {error}")
    ray.init(address=ray_address)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, whose own SIGTERM handler aborts
        signal.signal(sig, lambda *_: done.set())
    try:
        start(settings, options)
        done.wait()
    except RuntimeError as error:  # a replica that failed to start or to load its model: Ray logged why
        sys.exit(f"error: {error}")
    finally:
        stop(options.app_name)
        ray.shutdown()


if __name__ == "__main__":
    main()
