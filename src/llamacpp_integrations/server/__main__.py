"""``python -m llamacpp_integrations.server --model PATH`` (or ``llamacpp-server``): run the server."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
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
    exposed = [host for host in settings.hosts if not _is_loopback(host)]
    if settings.api_key is not None or not exposed:
        return None
    return f"binding {', '.join(exposed)} without --api_key: anyone who can reach it can use the models"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_sockets(hosts: Sequence[str], port: int) -> list[socket.socket]:
    """A TCP socket bound to ``port`` on each of ``hosts`` (port 0: the first one's free port, for all).

    An address with a colon is IPv6 (only IPv6: ``::`` beside ``0.0.0.0`` is allowed).
    Raises ``OSError`` (the sockets bound so far closed) when one address cannot be bound.
    """
    bound: list[socket.socket] = []
    try:
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


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
    try:
        sockets = bind_sockets(settings.hosts, port)
    except OSError as error:
        sys.exit(f"error: cannot listen on {settings.host} port {port}: {error}")
    for sock in sockets:
        address, bound_port = sock.getsockname()[:2]
        shown = f"[{address}]" if sock.family == socket.AF_INET6 else address
        logger.info("listening on http://%s:%d", shown, bound_port)
    config = uvicorn.Config(
        app,
        host=settings.hosts[0],
        port=sockets[0].getsockname()[1],
        # h11 writes header names as the app gives them (httptools lowercases them): clients that look
        # up llama-server's Process-Start-Time-Unix case-sensitively find it.
        http="h11",
        log_config=None,  # our logging configuration; one access line per request comes from the app
        access_log=False,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S) + 5,
    )
    _Server(config, app.state.server.request_shutdown).run(sockets=sockets)


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
