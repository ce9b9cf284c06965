"""``--n_predict``: the tokens a ``/completion`` request generates when it sets none (llama-server's
``--n-predict``), found missing by llama.cpp's server suite (benchmarks/llama_server_suite)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server_support import RunningServer


@pytest.fixture(scope="module")
def short_server(start_server: Callable[..., RunningServer], model_path: Path) -> RunningServer:
    return start_server(
        "--model",
        str(model_path),
        "--n_ctx",
        "512",
        "--n_parallel",
        "1",
        "--n_threads",
        "2",
        "--n_predict",
        "5",
    )


def test_a_completion_without_n_predict_stops_at_the_servers_default(short_server: RunningServer) -> None:
    with httpx.Client(base_url=short_server.url, timeout=120) as http:
        body = {"prompt": "Once upon a time", "ignore_eos": True, "seed": 1}
        answer = http.post("/completion", json=body).json()
        assert answer["tokens_predicted"] == 5
        assert answer["stop_type"] == "limit"
        # a request's own n_predict (or max_tokens) wins over the default
        assert http.post("/completion", json={**body, "n_predict": 7}).json()["tokens_predicted"] == 7
        assert http.post("/completion", json={**body, "max_tokens": 3}).json()["tokens_predicted"] == 3
        props = http.get("/props").json()
        assert props["default_generation_settings"]["params"]["n_predict"] == 5
