"""What the serving benchmarks share: servers on loopback, streaming requests, figures.

Used by ``concurrency.py`` (llama-server) and ``server_bench.py`` (three servers).
Standard library only: every request goes to 127.0.0.1 over plain HTTP.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
SERVER_START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 900.0


# -- a server process -------------------------------------------------------------------------------
def free_port() -> int:
    """A port on the loopback interface that nothing listens on just now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def log_tail(log: Any, lines: int = 15) -> str:
    """The last ``lines`` lines a server wrote to its log file."""
    log.flush()
    log.seek(0)
    return "\n".join(log.read().strip().splitlines()[-lines:])


def wait_ready(
    port: int,
    process: subprocess.Popen[Any],
    log: Any,
    name: str,
    path: str = "/health",
    timeout_s: float = SERVER_START_TIMEOUT_S,
) -> None:
    """Poll ``GET path`` until it answers 200 (the model is loaded); raise if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode}):\n{log_tail(log)}")
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return
        except OSError:
            pass  # not listening yet
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s:\n{log_tail(log)}")


@contextmanager
def running_process(
    command: Sequence[str],
    port: int,
    name: str,
    ready_path: str = "/health",
    env: dict[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen[Any], float]]:
    """Start a server listening on ``port``; yield (process, seconds until ready); stop it after.

    Its output goes to a temporary file, whose tail is shown if it fails to start.
    """
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(part) for part in command],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        try:
            wait_ready(port, process, log, name, ready_path)
            yield process, time.perf_counter() - started
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- streaming requests --------------------------------------------------------------------------------
def sse_events(port: int, path: str, body: dict[str, Any], name: str) -> Iterator[dict[str, Any]]:
    """One ``POST path`` with a JSON body; yields each server-sent ``data:`` event, parsed.

    Ends at ``[DONE]`` or when the server closes the stream; raises on a status other
    than 200 and on an ``{"error": ...}`` event.  Comments (pings) are skipped.
    """
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{name} answered {response.status}: {response.read()[:500]!r}")
        for raw in response:  # "data: {json}" lines, blank lines between events
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[len(b"data:") :].strip()
            if payload == b"[DONE]":
                return
            event = json.loads(payload)
            if isinstance(event, dict) and "error" in event:
                raise RuntimeError(f"{name} error: {event['error']}")
            yield event
    finally:
        connection.close()


def post_json(port: int, path: str, body: dict[str, Any], name: str) -> dict[str, Any]:
    """One non-streaming ``POST path``; the JSON answer (raises on a status other than 200)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{name} answered {response.status}: {data[:500]!r}")
        return dict(json.loads(data))
    finally:
        connection.close()


# -- figures and the machine ----------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; exits with a hint where matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as error:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, title: str) -> None:
    """Title and lay out ``fig``, write it to ``path`` (creating its folder), then free it."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


# -- command lines --------------------------------------------------------------------------------------
def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser that shows the benchmark's docstring, with the shared ``--model`` option."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=None, help="GGUF model (default: the packaged Gemma 3 270M Q4_K_M)"
    )
    return parser


def add_load_options(parser: argparse.ArgumentParser, *, clients: str, targets: Sequence[str]) -> None:
    """The options of the many-clients benchmarks: the load, its rounds and which targets run."""
    parser.add_argument(
        "--clients",
        type=client_counts,
        default=client_counts(clients),
        metavar="N,N,...",
        help=f"concurrent client counts to measure (default: {clients})",
    )
    parser.add_argument("--tokens", type=int, default=64, help="tokens each stream generates (%(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every target (%(default)s)")
    parser.add_argument(
        "--ctx-per-slot",
        type=int,
        default=256,
        help="context per client; N clients get a context of N times this (%(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds, interleaving the targets; the table shows median rates (%(default)s)",
    )
    parser.add_argument(
        "--warmup-tokens",
        type=int,
        default=8,
        help="tokens of each client's warm-up stream before measuring (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1234, help="base sampling seed (%(default)s)")
    parser.add_argument(
        "--targets",
        default=",".join(targets),
        help=f"comma-separated subset of {','.join(targets)} (default: all)",
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="do not build llama.cpp's tools / install the peer when missing; skip them with a note",
    )


def add_output_options(parser: argparse.ArgumentParser, stem: str) -> None:
    """``--plot`` and ``--json``, each with an optional file name (default: results/<stem>-<time>.*)."""
    parser.add_argument(
        "--plot",
        nargs="?",
        const="",
        default=None,
        metavar="PNG",
        help=f"write t/s and TTFT against clients (default file: results/{stem}-<time>.png)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help=f"write all samples and the table as JSON (default file: results/{stem}-<time>.json)",
    )


def chosen_targets(parser: argparse.ArgumentParser, text: str, targets: Sequence[str]) -> list[str]:
    """The targets named in ``--targets`` (comma-separated); a parser error for an unknown one."""
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(targets))
    if unknown:
        parser.error(f"unknown targets: {unknown}; choose from {tuple(targets)}")
    return chosen


def client_counts(text: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]`` (sorted, unique, positive), for ``--clients``."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("client counts must be positive integers")
    return sorted(set(counts))
