"""RPC workers for tests: ``llamacpp-rpc-server`` processes on free loopback ports.

A worker is a child process (``python -m llamacpp_native.cli.rpc_server``) serving
the CPU device with one thread; ``worker()`` waits until it answers the
handshake and always stops it afterwards.  A test process must not lose a
worker while one of its models uses it (ggml would abort the process), so tests
that stop a worker mid-use do it in a client process of their own
(``run_client``), with workers the test owns (``worker_processes``), so that a
worker can outlive the client or die before it, in every order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from llamacpp_native import RpcServerError
from llamacpp_native.binding import rpc


def free_port() -> int:
    """A loopback TCP port that nothing listens on (just now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(port: int, *extra: str) -> subprocess.Popen[bytes]:
    """Start a worker on 127.0.0.1:``port`` and wait until it answers the handshake."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llamacpp_native.cli.rpc_server",
            "--port",
            str(port),
            "--threads",
            "1",
            *extra,
        ],
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
def worker_processes(count: int) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """``count`` workers on free loopback ports, as (``host:port``, process); stopped on exit."""
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for _ in range(count):
            port = free_port()
            started.append((f"127.0.0.1:{port}", start_worker(port)))
        yield started
    finally:
        for _address, process in started:
            stop_worker(process)


@contextlib.contextmanager
def workers(count: int) -> Iterator[list[str]]:
    """``count`` workers on free loopback ports, as ``host:port`` addresses; stopped on exit."""
    with worker_processes(count) as started:
        yield [address for address, _ in started]


def kill_worker(pid: int, address: str) -> None:
    """Kill a worker that another process started (SIGKILL: a crash), and wait until it is gone.

    Gone means its port refuses connections: by then the kernel has closed every
    connection the worker had, so a client sees it stopped.
    """
    os.kill(pid, signal.SIGKILL)
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except ConnectionRefusedError:
            return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the RPC worker {address} (pid {pid}) did not stop")


CLIENT_HEADER = """
import sys
sys.path.insert(0, {tests!r})
from rpc_support import kill_worker
from llamacpp_native import RpcServerError
MODEL = {model!r}
addresses = {addresses!r}
"""


def run_client(
    model: Path, started: list[tuple[str, subprocess.Popen[bytes]]], body: str
) -> subprocess.CompletedProcess[str]:
    """Run ``body`` as a client process of its own, with ``MODEL``, ``addresses`` and ``kill_worker``.

    The workers belong to the caller, so one the client does not kill outlives it.
    """
    header = CLIENT_HEADER.format(
        tests=str(Path(__file__).parent), model=str(model), addresses=[a for a, _ in started]
    )
    script = textwrap.dedent(header) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)


WHEN_A_WORKER_STOPS = ("before generation", "after generation", "before exit")
"""When a worker dies in the scenarios that must end in a clean exit (a death mid-call aborts)."""


def worker_death_steps(
    started: list[tuple[str, subprocess.Popen[bytes]]], *, when: str, dies: int, then_the_other: bool
) -> str:
    """Client steps after loading (``ask()`` makes one request): worker ``dies`` stops ``when``.

    A request after the death prints ``typed error N: ...``.  With ``then_the_other``
    the other worker stops too, before the client exits; otherwise it outlives the
    client.  The script ends with ``end of script``.
    """
    assert when in WHEN_A_WORKER_STOPS
    (dead, dead_process), (other, other_process) = started[dies], started[1 - dies]
    steps = []
    if when == "after generation":
        steps.append('print("answer:", repr(ask()))')
    steps.append(f"kill_worker({dead_process.pid}, {dead!r})")
    if when != "before exit":
        steps.append(
            "for attempt in (1, 2):\n"
            "    try:\n"
            "        ask()\n"
            "    except RpcServerError as error:\n"
            '        print(f"typed error {attempt}:", error)'
        )
    if then_the_other:
        steps.append(f"kill_worker({other_process.pid}, {other!r})")
    steps.append('print("end of script")')
    return "\n".join(steps) + "\n"


def assert_clean_exit_after_worker_death(
    result: subprocess.CompletedProcess[str], when: str, dead: str
) -> list[str]:
    """The client of ``worker_death_steps`` exited 0, its model's memory leaked with a warning.

    Every request after the death was a typed error naming the dead worker and
    saying the model is unusable; those lines are returned.
    """
    assert result.returncode == 0, result.stderr[-3000:]
    assert "end of script" in result.stdout
    assert "not freeing model" in result.stderr  # at close or at exit: freeing needs the dead worker
    errors = [line for line in result.stdout.splitlines() if line.startswith("typed error")]
    if when == "before exit":
        assert errors == []
    else:
        assert len(errors) == 2
        assert all(dead in line and "unusable" in line for line in errors), errors
    return errors
