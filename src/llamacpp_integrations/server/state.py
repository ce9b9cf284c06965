"""What every route shares: settings, the model registry, metrics, and the server's lifecycle."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request

from llamacpp_integrations.server.errors import APIError, shutting_down
from llamacpp_integrations.server.metrics import Metrics
from llamacpp_integrations.server.models import ModelRegistry
from llamacpp_integrations.server.native import props
from llamacpp_integrations.server.settings import ServerSettings
from llamacpp_native.binding import rpc
from llamacpp_native.errors import RpcServerError

logger = logging.getLogger("llamacpp_integrations.server")

RPC_PROBE_TIMEOUT = 0.5
"""Seconds ``/health`` waits for a worker that it must connect to anew (a loaded model's is inspected)."""


class ServerState:
    """The server's shared state: ready once the default model has loaded, closing on shutdown."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.registry = ModelRegistry(
            settings.model_list(),
            models_max=settings.models_max,
            max_queue=settings.max_queue,
            verbose=settings.verbose,
            strict_names=settings.strict_model_name,
            sleep_idle_seconds=settings.sleep_idle_seconds,
            describe=props if settings.sleep_idle_seconds is not None else None,
            on_sleep=self._on_sleep,
        )
        self.ready = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._preload: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None

    async def startup(self) -> None:
        """Start loading the default model in the background (``/health`` answers 503 until then)."""
        self._loop = asyncio.get_running_loop()
        self._preload = asyncio.create_task(self._load_default())

    async def _load_default(self) -> None:
        try:
            lease = await self.registry.acquire(None)
        except Exception:
            logger.exception("the default model could not be loaded")
            return
        lease.release()
        self.ready = True
        logger.info("ready: serving %s", ", ".join(entry.alias for entry in self.registry.entries))

    def _on_sleep(self, asleep: bool) -> None:
        """Keep what ``/metrics`` says while the server sleeps (it must not wake a model to answer)."""
        if asleep:
            self.metrics.fall_asleep(self.registry.gauges())
        else:
            self.metrics.wake()

    def metrics_text(self) -> str:
        """The text of ``GET /metrics`` (while the server sleeps: what it measured before)."""
        return self.metrics.scrape(self.registry.gauges(), asleep=self.registry.asleep)

    def health_error(self) -> APIError | None:
        """Why the server cannot serve yet (or any more), or None when it is ready."""
        if self.registry.closing:
            return shutting_down()
        if self.ready:
            return None
        failure = self.registry.default.load_error
        if failure is not None:
            return APIError(
                503, f"The model could not be loaded: {failure}", "server_error", code="model_load_failed"
            )
        return APIError(503, "Loading the model", "server_error", code="model_loading")

    def unusable_models(self) -> list[dict[str, Any]]:
        """The models that a stopped RPC worker made unusable until the server restarts.

        A loaded model's workers are checked now; a model not loaded is unusable if
        one of its workers was lost while another model used it.  Each entry says
        the model's name, its workers, the lost ones, and why.
        """
        found = []
        for entry in self.registry.entries:
            servers = [str(rpc.parse_endpoint(s)) for s in (entry.settings.rpc or "").split(",") if s.strip()]
            if not servers:
                continue
            llama = entry.llama
            reason = None
            if llama is not None and not llama.model.closed:
                try:
                    llama.model.check_rpc_servers(timeout=RPC_PROBE_TIMEOUT)
                except RpcServerError as error:
                    reason = str(error)
            lost = sorted(set(servers) & set(rpc.lost_servers()))
            if lost and reason is None:
                reason = f"RPC server {', '.join(lost)} stopped while this server used it"
            if reason is not None:
                found.append({"model": entry.alias, "rpc_servers": servers, "lost": lost, "message": reason})
        return found

    def request_shutdown(self) -> None:
        """Stop admitting and cancel running requests; safe from a signal handler or another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_shutdown)

    def _begin_shutdown(self) -> None:
        if self._closing is None:
            busy = sum(entry.in_flight for entry in self.registry.entries)
            logger.info("shutting down: %d request(s) in flight are cancelled", busy)
            self._closing = asyncio.ensure_future(self.registry.close())

    async def shutdown(self) -> None:
        """Cancel what still runs and close every model (the lifespan's end)."""
        if self._preload is not None:
            self._preload.cancel()
        self._begin_shutdown()
        assert self._closing is not None
        await self._closing


def server_state(request: Request) -> ServerState:
    """The ``ServerState`` of the app serving ``request``."""
    state = request.app.state.server
    assert isinstance(state, ServerState)
    return state
