"""The server's ``--rpc`` and device flags reach ``Llama``; a worker that is down answers 503.

A worker's death is a 503 ``rpc_unavailable`` on every later request, ``/health``
names the model it made unusable, and the server process exits 0 (it leaks that
model's memory instead of freeing it on the dead worker).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from server_support import assert_openai_error

from llamacpp_integrations.server import ServerSettings, create_app
from llamacpp_integrations.server.settings import ENV_PREFIX, parse_settings
from rpc_support import (
    WHEN_A_WORKER_STOPS,
    assert_clean_exit_after_worker_death,
    free_port,
    run_client,
    worker_death_steps,
    worker_processes,
    workers,
)


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


SERVER_CLIENT = """
import json, time
when = WHEN
from fastapi.testclient import TestClient
from llamacpp_integrations.server import ServerSettings, create_app
settings = ServerSettings(model=MODEL, model_alias="split", rpc=",".join(addresses), n_gpu_layers=-1,
                          n_ctx=256, n_parallel=1, n_threads=1)
def ask():
    response = client.post("/v1/completions", json={"prompt": "1, 2, 3,", "max_tokens": 2})
    if response.status_code == 503:
        raise RpcServerError(f"{response.status_code} {response.text}")
    response.raise_for_status()
    return response.json()["choices"][0]["text"]
with TestClient(create_app(settings)) as client:
    while client.get("/health").status_code != 200:
        time.sleep(0.1)
STEPS
    if when != "before exit":  # then the lifespan's shutdown is the first to find the dead worker
        health = client.get("/health")
        print("health:", health.status_code, json.dumps(health.json()))
"""


@pytest.mark.parametrize(("dies", "then_the_other"), [(0, True), (1, False)], ids=["both-die", "one-dies"])
@pytest.mark.parametrize("when", WHEN_A_WORKER_STOPS)
def test_a_stopped_worker_is_a_503_and_health_names_the_model_and_the_server_exits_0(
    model_path: Path, when: str, dies: int, then_the_other: bool
) -> None:
    with worker_processes(2) as started:
        steps = worker_death_steps(started, when=when, dies=dies, then_the_other=then_the_other)
        body = SERVER_CLIENT.replace("WHEN", repr(when)).replace("STEPS", textwrap.indent(steps, "    "))
        result = run_client(model_path, started, body)
    dead = started[dies][0]
    for line in assert_clean_exit_after_worker_death(result, when, dead):
        assert line.startswith("typed error") and " 503 " in line and '"rpc_unavailable"' in line
    if when == "before exit":
        return
    status, health = result.stdout.split("health: ")[1].split(" ", 1)
    body = json.loads(health)
    assert status == "503"
    assert body["error"]["code"] == "rpc_unavailable" and "split" in body["error"]["message"]
    [unusable] = body["unusable_models"]
    assert unusable["model"] == "split"
    assert unusable["rpc_servers"] == [address for address, _ in started]
    assert dead in unusable["lost"] and dead in unusable["message"]
