"""The server's ``--rpc`` and device flags reach ``Llama``; a worker that is down answers 503."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from server_support import assert_openai_error

from llamacpp_integrations.server import ServerSettings, create_app
from llamacpp_integrations.server.settings import ENV_PREFIX, parse_settings
from rpc_support import free_port, workers


@pytest.fixture(autouse=True)
def _no_server_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def test_rpc_and_device_flags_reach_llama(model_path: Path) -> None:
    settings = parse_settings(
        ["--model", str(model_path), "--rpc", "10.0.0.5:50052, 10.0.0.6:50052", "--tensor-split", "3,1"]
        + ["--n-gpu-layers", "-1", "--split-mode", "row", "--main-gpu", "1", "--offload-kqv", "false"]
        + ["--type-k", "q8_0", "--flash-attn"]
    )
    kwargs = settings.model_list()[0].llama_kwargs(verbose=False)
    assert kwargs["rpc_servers"] == ["10.0.0.5:50052", "10.0.0.6:50052"]
    assert kwargs["tensor_split"] == [3.0, 1.0]
    assert (kwargs["split_mode"], kwargs["main_gpu"], kwargs["offload_kqv"]) == ("row", 1, False)
    assert (kwargs["type_k"], kwargs["flash_attn"], kwargs["n_gpu_layers"]) == ("q8_0", True, -1)


@pytest.mark.parametrize(
    "flags", [["--rpc", "no-port"], ["--tensor-split", "1,x"], ["--split-mode", "diagonal"]]
)
def test_bad_device_flags_stop_with_a_message(
    model_path: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--model", str(model_path), *flags])
    assert flags[0].lstrip("-").replace("-", "_") in capsys.readouterr().err


def test_completions_run_on_a_worker(model_path: Path) -> None:
    with workers(1) as (address,):
        settings = ServerSettings(
            model=str(model_path), rpc=address, n_gpu_layers=-1, n_ctx=256, n_parallel=1, n_threads=1
        )
        with TestClient(create_app(settings)) as client:
            response = client.post("/v1/completions", json={"prompt": "1, 2, 3,", "max_tokens": 3})
            assert response.status_code == 200, response.text


def test_an_unreachable_worker_is_a_503_in_openai_shape(model_path: Path) -> None:
    settings = ServerSettings(model=str(model_path), rpc=f"127.0.0.1:{free_port()}", n_gpu_layers=-1)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert_openai_error(response, 503, "rpc_unavailable")
