"""RPC workers for tests: ``llamacpp-rpc-server`` processes on free loopback ports.

A worker is a child process (``python -m llamacpp_native.rpc_server``) serving
the CPU device with one thread; ``worker()`` waits until it answers the
handshake and always stops it afterwards.  A test process must not lose a
worker while one of its models uses it (ggml would abort the process), so tests
that stop a worker mid-use do it in a child process of their own.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from llamacpp_native import RpcServerError, rpc


def free_port() -> int:
    """A loopback TCP port that nothing listens on (just now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(port: int, *extra: str) -> subprocess.Popen[bytes]:
    """Start a worker on 127.0.0.1:``port`` and wait until it answers the handshake."""
    process = subprocess.Popen(
        [sys.executable, "-m", "llamacpp_native.rpc_server", "--port", str(port), "--threads", "1", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            rpc.handshake(f"127.0.0.1:{port}", timeout=2)
            return process
        except RpcServerError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_worker(process)
                raise RuntimeError(f"the RPC worker on port {port} did not start") from None
            time.sleep(0.1)


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """Stop a worker (SIGTERM, then SIGKILL) and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def workers(count: int) -> Iterator[list[str]]:
    """``count`` workers on free loopback ports, as ``host:port`` addresses; stopped on exit."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        addresses = []
        for _ in range(count):
            port = free_port()
            processes.append(start_worker(port))
            addresses.append(f"127.0.0.1:{port}")
        yield addresses
    finally:
        for process in processes:
            stop_worker(process)
