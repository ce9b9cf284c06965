"""Helpers for the server tests: a server subprocess, metrics parsing, SSE lines, error checks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from llamacpp_integrations.server.settings import ENV_PREFIX

STARTUP_LIMIT_S = 120.0
"""Only a guard against a hung start; no test asserts how long anything takes."""

SERVER_FLAGS = ["--n_ctx", "2048", "--n_parallel", "8", "--n_threads", "2"]
"""The main test server: 8 slots, so that 8 concurrent streams all run at once."""

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in the user's city",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["unit"],
        },
    },
}
"""A tool whose only parameter is an enum, so a grammar-constrained call closes in a few tokens."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RunningServer:
    """A server subprocess: its base URL, its process and its log."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "llamacpp_integrations.server", *args, "--port", str(self.port)]
        # The server's own settings come only from the test: none from the developer's environment.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**inherited, **(env or {})}
            )

    def wait_ready(self) -> None:
        """Return once ``/health`` answers 200; fail with the server's log if it never does."""
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the server did not become ready:\n{self.log()}")

    def log(self) -> str:
        """What the server wrote so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM, then wait for the exit; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text -> ``{'name{labels}': value}`` (comment lines skipped)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def total(values: dict[str, float], name: str) -> float:
    """The sum of every sample of metric ``name`` (all label sets)."""
    return sum(v for key, v in values.items() if key == name or key.startswith(name + "{"))


async def wait_for(condition: Callable[[], Any], what: str, limit_s: float = 120.0) -> None:
    """Poll ``condition`` (sync or async) until it holds; the limit only guards against a hang."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"never happened: {what}")


def sse_data(lines: list[str]) -> list[str]:
    """The ``data:`` payloads of server-sent event lines."""
    return [line[len("data:") :].strip() for line in lines if line.startswith("data:")]


async def first_event(lines: AsyncIterator[str]) -> str:
    """Read a response's lines up to its first ``data:`` event, leaving the rest unread.

    Keep ``lines`` referenced while the stream should stay open: an abandoned line
    iterator is finalised at once, and that closes the connection.
    """
    async for line in lines:
        if line.startswith("data:"):
            return line[len("data:") :].strip()
    raise AssertionError("the stream ended before its first event")


EXTRA_ERROR_FIELDS = {"n_prompt_tokens", "n_ctx"}
"""What an error may hold beyond OpenAI's four fields: llama-server's counts of a context overflow."""


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Check ``response`` is ``status`` with OpenAI's error body (and ``code``); return the error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) - EXTRA_ERROR_FIELDS == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)
