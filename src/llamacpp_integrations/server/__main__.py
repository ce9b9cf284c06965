"""``python -m llamacpp_integrations.server --model PATH`` (or ``llamacpp-server``): run the server."""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import uvicorn

from llamacpp_integrations.server.app import create_app
from llamacpp_integrations.server.generation import SHUTDOWN_GRACE_S
from llamacpp_integrations.server.settings import ServerSettings, parse_settings
from llamacpp_integrations.server.vertex import VertexRoutes
from llamacpp_native.errors import ModelNotFoundError

logger = logging.getLogger("llamacpp_integrations.server")


class _Server(uvicorn.Server):
    """uvicorn, telling the app at the first SIGINT/SIGTERM so it cancels running requests."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig in (signal.SIGINT, signal.SIGTERM):
            self._on_exit()
        super().handle_exit(sig, frame)


def security_warning(settings: ServerSettings) -> str | None:
    """A warning when the server listens beyond this machine without an API key."""
    if settings.api_key is not None or _is_loopback(settings.host):
        return None
    return f"binding {settings.host} without --api_key: anyone who can reach it can use the models"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: ServerSettings) -> None:
    """Run the server for ``settings`` until SIGINT or SIGTERM."""
    warning = security_warning(settings)
    if warning is not None:
        logger.warning(warning)
    app = create_app(settings)
    port = settings.port
    vertex = VertexRoutes.from_environment()
    if vertex is not None and vertex.port is not None and vertex.port != port:
        logger.warning("Vertex AI: listening on AIP_HTTP_PORT %d, not %d", vertex.port, port)
        port = vertex.port
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        log_config=None,  # our logging configuration; one access line per request comes from the app
        access_log=False,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S) + 5,
    )
    _Server(config, app.state.server.request_shutdown).run()


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: parse flags, environment and config file, then serve."""
    settings = parse_settings(argv)
    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        serve(settings)
    except ModelNotFoundError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
