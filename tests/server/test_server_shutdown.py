"""SIGTERM: running streams end with a final error event, the models close, the process exits."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
from server_support import RunningServer, first_event


async def test_sigterm_ends_running_streams_with_an_error_event_and_exits(
    start_server: Callable[..., RunningServer], model_path: Path
) -> None:
    server = start_server(
        "--model", str(model_path), "--n_ctx", "1024", "--n_parallel", "2", "--n_threads", "2"
    )
    body = {"prompt": "Once upon a time", "max_tokens": 900, "ignore_eos": True, "stream": True}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=120) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        lines = response.aiter_lines()
        await first_event(lines)
        server.process.send_signal(signal.SIGTERM)
        rest = [line async for line in lines]
    events = [line[len("data:") :].strip() for line in rest if line.startswith("data:")]
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "server_shutting_down"
    exit_status = await asyncio.to_thread(server.process.wait, 60)
    assert exit_status in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    assert "Application shutdown complete" in server.log()
