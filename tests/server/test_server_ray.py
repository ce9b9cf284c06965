"""The server under Ray Serve: two replicas behind Ray's proxy share concurrent requests, streams included."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="the Ray Serve tests need the 'ray' extra: pip install '.[ray]'")

import httpx  # noqa: E402
import ray  # noqa: E402
from server_support import free_port  # noqa: E402

from llamacpp_integrations.server import ServerSettings  # noqa: E402
from llamacpp_integrations.server.ray_serve import (  # noqa: E402
    REPLICA_HEADER,
    ReplicaOptions,
    replica_settings,
    start,
    stop,
)
from llamacpp_integrations.server.settings import ENV_PREFIX  # noqa: E402
from llamacpp_native.errors import ModelNotFoundError  # noqa: E402

REPLICAS = 2
SLOTS = 2
"""Slots per replica, and so the requests each takes at once: eight concurrent requests need both."""


@pytest.fixture(scope="module")
def ray_server(model_path: Path) -> Iterator[str]:
    """Two replicas (one CPU, one thread, 512 tokens of context each) behind a local Ray's proxy."""
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith(ENV_PREFIX) or n == "RAY_ADDRESS"]:
            env.delenv(name)
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_cpus=REPLICAS, include_dashboard=False, log_to_driver=False)
        try:
            port = free_port()
            settings = ServerSettings(
                model=str(model_path), host="127.0.0.1", port=port, n_ctx=512, n_parallel=SLOTS, seed=1
            )
            start(settings, ReplicaOptions(replicas=REPLICAS, replica_cpus=1))
            yield f"http://127.0.0.1:{port}"
            stop()
        finally:
            ray.shutdown()


def _chat(content: str, **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 24, **extra}


async def test_concurrent_requests_spread_over_both_replicas_streamed_or_not(ray_server: str) -> None:
    async with httpx.AsyncClient(base_url=ray_server, timeout=120) as http:

        async def whole(i: int) -> str:
            answer = await http.post("/v1/chat/completions", json=_chat(f"Count to {i}."))
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"]
            return answer.headers[REPLICA_HEADER]

        async def streamed(i: int) -> str:
            body = _chat(f"Name {i} fruits.", stream=True, ignore_eos=True)
            async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
                assert answer.status_code == 200
                events = [line[6:] async for line in answer.aiter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            deltas = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
            assert len([d for d in deltas if d]) > 1
            return answer.headers[REPLICA_HEADER]

        replicas = await asyncio.gather(*(streamed(i) if i % 2 else whole(i) for i in range(4 * REPLICAS)))
    assert len(set(replicas)) == REPLICAS


async def test_a_stream_arrives_through_the_proxy_as_it_is_generated(ray_server: str) -> None:
    body = _chat("Tell me a story.", stream=True, ignore_eos=True, max_tokens=64)
    arrivals = []
    async with (
        httpx.AsyncClient(base_url=ray_server, timeout=120) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as answer,
    ):
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    # 64 tokens take far longer than this on any CPU; a buffered answer would arrive all at once.
    assert arrivals[-1] - arrivals[0] > 0.05


def test_each_replica_reports_health_and_its_own_metrics(ray_server: str) -> None:
    with httpx.Client(base_url=ray_server, timeout=60) as http:
        health = http.get("/health")
        metrics = http.get("/metrics")
    assert health.status_code == 200
    assert REPLICA_HEADER in health.headers
    assert "vllm:num_requests_running" in metrics.text


def test_replicas_get_absolute_paths_and_threads_that_fit_their_cpus(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(model_path.parent)
    settings = ServerSettings(model=model_path.name)
    resolved = replica_settings(settings, ReplicaOptions(replica_cpus=3))
    assert resolved.model == str(model_path.resolve())
    assert resolved.n_threads == 3
    assert replica_settings(settings.model_copy(update={"n_threads": 1}), ReplicaOptions()).n_threads == 1


def test_a_missing_model_is_refused_before_ray_starts_anything(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="missing.gguf"):
        replica_settings(ServerSettings(model=str(tmp_path / "missing.gguf")), ReplicaOptions())
