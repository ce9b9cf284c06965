"""``--sleep_idle_seconds``: a model no request has used for that long is unloaded (llama-server's
sleeping) and loaded again by the next request that needs it.

``/health``, ``/props`` (with ``is_sleeping``), ``/models`` and ``/metrics`` answer while it sleeps
without waking it (``/metrics`` with what it measured just before, as llama-server's); a request
that holds the model (a running stream) keeps it awake; requests that arrive while it sleeps share
one load.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server_support import RunningServer, first_event, metric_values, total, wait_for

IDLE_S = 1
LOADING = "loading model"
"""What the server logs each time it loads the model."""

LONG = {"prompt": "Once upon a time", "n_predict": 1800, "ignore_eos": True, "stream": True}
"""A generation only the client's leaving ends early: it holds the model while it streams."""


@pytest.fixture(scope="module")
def sleepy(start_server: Callable[..., RunningServer], model_path: Path) -> RunningServer:
    """A server whose model sleeps after one idle second."""
    flags = ["--n_ctx", "2048", "--n_parallel", "4", "--n_threads", "1"]
    return start_server("--model", str(model_path), *flags, "--sleep_idle_seconds", str(IDLE_S))


def _client(server: RunningServer) -> httpx.AsyncClient:
    """Plain HTTP to ``server`` (one per test: it belongs to the test's event loop)."""
    return httpx.AsyncClient(base_url=server.url, timeout=120)


async def _sleeping(http: httpx.AsyncClient) -> bool:
    response = await http.get("/props")
    assert response.status_code == 200
    return bool(response.json()["is_sleeping"])


async def _asleep(http: httpx.AsyncClient) -> None:
    await wait_for(lambda: _sleeping(http), "the model going to sleep")


async def test_read_only_routes_answer_while_the_model_sleeps_without_waking_it(
    sleepy: RunningServer, model_path: Path
) -> None:
    async with _client(sleepy) as http:
        await _asleep(http)
        loads = sleepy.log().count(LOADING)
        assert (await http.get("/health")).status_code == 200
        models = (await http.get("/models")).json()["data"]
        assert [model["id"] for model in models] == [str(model_path)]
        assert (await http.get("/metrics")).status_code == 200
        props = (await http.get("/props")).json()
        assert props["is_sleeping"] is True
        assert props["model_path"] == str(model_path)
        assert props["total_slots"] == 4 and props["default_generation_settings"]["n_ctx"] == 2048
        assert await _sleeping(http)
    assert sleepy.log().count(LOADING) == loads


async def test_a_generation_wakes_the_model_and_holding_it_keeps_it_awake(sleepy: RunningServer) -> None:
    async with _client(sleepy) as http:
        await _asleep(http)
        async with http.stream("POST", "/completion", json=LONG) as response:
            lines = response.aiter_lines()
            await first_event(lines)
            await asyncio.sleep(2 * IDLE_S)  # idle time passes, but this stream holds the model
            assert not await _sleeping(http)
            assert total(metric_values((await http.get("/metrics")).text), "llamacpp_model_loaded") == 1
        await _asleep(http)  # the client left: idle again, so asleep again


async def test_requests_arriving_while_the_model_sleeps_share_one_load(sleepy: RunningServer) -> None:
    async with _client(sleepy) as http:
        await _asleep(http)
        loads = sleepy.log().count(LOADING)
        body = {"prompt": "Hello", "n_predict": 2}
        replies = await asyncio.gather(*(http.post("/completion", json=body) for _ in range(3)))
    assert [reply.status_code for reply in replies] == [200, 200, 200]
    assert sleepy.log().count(LOADING) == loads + 1


async def test_metrics_read_while_asleep_are_those_read_just_before(sleepy: RunningServer) -> None:
    async with _client(sleepy) as http:
        body = {"prompt": "Hello", "max_tokens": 4}
        assert (await http.post("/v1/completions", json=body)).status_code == 200
        await http.get("/metrics")  # reports the generation's throughput, and starts a new window
        awake = (await http.get("/metrics")).text
        assert metric_values(awake)["llamacpp:tokens_predicted_total"] > 0
        await _asleep(http)
        loads = sleepy.log().count(LOADING)
        assert (await http.get("/metrics")).text == awake
        assert await _sleeping(http)
    assert sleepy.log().count(LOADING) == loads


async def test_a_throughput_window_is_reported_once_across_sleeping_and_waking(sleepy: RunningServer) -> None:
    async with _client(sleepy) as http:
        body = {"prompt": "Hello", "max_tokens": 8, "ignore_eos": True}
        assert (await http.post("/v1/completions", json=body)).status_code == 200
        await _asleep(http)

        async def rate() -> float:
            return metric_values((await http.get("/metrics")).text)["llamacpp:predicted_tokens_seconds"]

        assert await rate() > 0  # the last generation's, measured before sleeping
        assert await rate() == 0  # nothing ran since the last scrape
        assert await _sleeping(http)
        assert (await http.post("/tokenize", json={"content": "Hello"})).status_code == 200
        assert not await _sleeping(http)
        assert await rate() == 0  # waking does not report that window again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's memory from /proc")
async def test_sleeping_frees_the_models_memory(sleepy: RunningServer, model_path: Path) -> None:
    async with _client(sleepy) as http:
        async with http.stream("POST", "/completion", json=LONG) as response:
            lines = response.aiter_lines()
            await first_event(lines)
            awake = _resident_bytes(sleepy)
        await _asleep(http)
    freed = awake - model_path.stat().st_size // 2
    await wait_for(lambda: _resident_bytes(sleepy) < freed, "at least half the model's size freed")


def _resident_bytes(server: RunningServer) -> int:
    """The server process's resident memory (``VmRSS``)."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024
