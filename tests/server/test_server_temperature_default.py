"""``--temp``: the temperature of requests that set none, on every route (llama-server's ``--temp``),
found missing by llama.cpp's server suite (benchmarks/llama_server_suite)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from server_support import RunningServer

from llamacpp_integrations.server.settings import ServerSettings


@pytest.fixture(scope="module")
def greedy(start_server: Callable[..., RunningServer], model_path: Path) -> RunningServer:
    """A server whose requests sample greedily unless they set a temperature."""
    flags = ["--n_ctx", "512", "--n_parallel", "1", "--n_threads", "2", "--temp", "0"]
    return start_server("--model", str(model_path), *flags)


def test_a_request_without_temperature_runs_at_the_servers_default(greedy: RunningServer) -> None:
    with httpx.Client(base_url=greedy.url, timeout=120) as http:
        assert http.get("/props").json()["default_generation_settings"]["params"]["temperature"] == 0
        body = {"prompt": "Once upon a time", "n_predict": 2}
        assert http.post("/completion", json=body).json()["generation_settings"]["temperature"] == 0
        # a request's own temperature wins over the default
        used = http.post("/completion", json={**body, "temperature": 1.5}).json()["generation_settings"]
        assert used["temperature"] == 1.5


def test_chat_without_temperature_samples_at_the_servers_default(greedy: RunningServer) -> None:
    # Greedy: every seed gives the same reply; at temperature 2 seeds give different ones.
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    with httpx.Client(base_url=greedy.url, timeout=120) as http:

        def replies(**sampling: float) -> set[str]:
            texts = set()
            for seed in (1, 2, 3):
                body = {"messages": messages, "max_tokens": 12, "seed": seed, **sampling}
                reply = http.post("/v1/chat/completions", json=body).json()
                texts.add(reply["choices"][0]["message"]["content"])
            return texts

        assert len(replies()) == 1
        assert len(replies(temperature=2.0)) > 1


def test_a_negative_default_temperature_is_refused(model_path: Path) -> None:
    with pytest.raises(ValidationError):
        ServerSettings(model=str(model_path), temp=-1)
