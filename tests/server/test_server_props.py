"""``GET /props``, ``GET /slots``, and the load gauges of ``/metrics`` that the Gateway API Inference
Extension's endpoint picker reads (queue depth, KV-cache use, LoRA info)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server_support import (
    RunningServer,
    assert_openai_error,
    first_event,
    metric_values,
    total,
    wait_for,
)

from llamacpp_integrations import __version__

LONG = {"n_predict": 1800, "ignore_eos": True, "stream": True}
"""A generation only cancellation ends early."""


def test_props_describe_the_model_and_its_defaults(http: httpx.Client, model_path: Path) -> None:
    response = http.get("/props")
    assert response.status_code == 200
    props = response.json()
    assert props["total_slots"] == 8
    assert props["model_path"] == str(model_path)
    settings = props["default_generation_settings"]
    assert settings["n_ctx"] == 2048
    params = settings["params"]
    assert (params["temperature"], params["top_k"], params["top_p"], params["min_p"]) == (0.8, 40, 0.95, 0.05)
    assert params["n_predict"] == -1 and params["grammar"] == ""
    assert "<start_of_turn>" in props["chat_template"]  # Gemma's template
    assert props["bos_token"] == "<bos>"
    assert props["modalities"] == {"vision": False, "audio": False}
    assert __version__ in props["build_info"]


def test_props_default_settings_are_those_a_completion_runs_with(http: httpx.Client) -> None:
    defaults = http.get("/props").json()["default_generation_settings"]["params"]
    used = http.post("/completion", json={"prompt": "Hi", "n_predict": 1}).json()["generation_settings"]
    assert {k: v for k, v in used.items() if k not in ("n_predict", "max_tokens")} == {
        k: v for k, v in defaults.items() if k not in ("n_predict", "max_tokens")
    }


async def test_slots_list_each_slot_idle(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        await wait_for(lambda: _idle(http), "no request left running by an earlier test")
        response = await http.get("/slots")
    assert response.status_code == 200
    slots = response.json()
    assert [slot["id"] for slot in slots] == list(range(8))
    assert all(slot["n_ctx"] == 2048 for slot in slots)
    assert not any(slot["is_processing"] for slot in slots)
    # llama-server's shape: a one-item list; an idle slot keeps nothing of its last request's budget
    idle = {"has_next_token": False, "has_new_line": False, "n_remain": -1, "n_decoded": 0}
    assert all(slot["next_token"] == [idle] for slot in slots)


def test_slots_refuse_a_bad_query_parameter(http: httpx.Client) -> None:
    error = assert_openai_error(http.get("/slots", params={"fail_on_no_slot": "perhaps"}), 400)
    assert error["param"] == "fail_on_no_slot"


async def test_a_running_request_shows_in_slots_and_gauges(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        await wait_for(lambda: _idle(http), "no request left running by an earlier test")
        body = {"prompt": "Once upon a time", **LONG}
        async with http.stream("POST", "/completion", json=body) as response:
            lines = response.aiter_lines()
            await first_event(lines)
            busy = [slot for slot in (await http.get("/slots")).json() if slot["is_processing"]]
            assert len(busy) == 1
            (next_token,) = busy[0]["next_token"]
            assert next_token["has_next_token"] and next_token["n_remain"] > 0
            assert next_token["n_decoded"] >= 1
            assert busy[0]["n_prompt_tokens"] > 0
            values = metric_values((await http.get("/metrics")).text)
            assert total(values, "vllm:num_requests_running") == 1
            assert total(values, "llamacpp:requests_processing") == 1
            assert 0 < total(values, "vllm:kv_cache_usage_perc") < 1
            assert total(values, "vllm:kv_cache_usage_perc") == total(values, "llamacpp_kv_cache_usage_ratio")
        await wait_for(lambda: _idle(http), "the slot freed after the client left")
        values = metric_values((await http.get("/metrics")).text)
        assert total(values, "vllm:kv_cache_usage_perc") == 0  # an idle slot's cache can be evicted


async def _idle(http: httpx.AsyncClient) -> bool:
    values = metric_values((await http.get("/metrics")).text)
    return (
        total(values, "vllm:num_requests_running") == 0 and total(values, "llamacpp_requests_in_flight") == 0
    )


@pytest.fixture(scope="module")
def one_slot(start_server: Callable[..., RunningServer], model_path: Path) -> RunningServer:
    """A server with a single slot, so that a second request waits."""
    return start_server(
        "--model", str(model_path), "--n_ctx", "1024", "--n_parallel", "1", "--n_threads", "2"
    )


async def test_a_waiting_request_is_counted_as_waiting(one_slot: RunningServer, model_path: Path) -> None:
    async with httpx.AsyncClient(base_url=one_slot.url, timeout=120) as http:
        body = {"prompt": "Once upon a time", **LONG}
        async with http.stream("POST", "/completion", json=body) as running:
            running_lines = running.aiter_lines()
            await first_event(running_lines)
            waiting = asyncio.create_task(http.post("/completion", json={"prompt": "Hi", "n_predict": 1}))
            await wait_for(lambda: _waiting(http, 1), "the second request waiting for the slot")
            values = metric_values((await http.get("/metrics")).text)
            assert values["llamacpp:requests_deferred"] == 1  # llama-server's series: unlabelled
            assert values[f'llamacpp_requests_waiting{{model="{model_path}"}}'] == 1
            assert total(values, "vllm:num_requests_running") == 1
            refused = await http.get("/slots", params={"fail_on_no_slot": 1})
            assert_openai_error(refused, 503, "no_slot_available")
        assert (await waiting).status_code == 200  # it ran once the first one left
        await wait_for(lambda: _waiting(http, 0), "nothing waiting any more")


async def _waiting(http: httpx.AsyncClient, count: int) -> bool:
    return total(metric_values((await http.get("/metrics")).text), "vllm:num_requests_waiting") == count


def test_lora_info_has_the_labels_the_picker_reads(http: httpx.Client, model_path: Path) -> None:
    text = http.get("/metrics").text
    assert "# TYPE vllm:lora_requests_info gauge" in text
    (line,) = [line for line in text.splitlines() if line.startswith("vllm:lora_requests_info{")]
    for label in ("running_lora_adapters", "waiting_lora_adapters", "max_lora", "model_name"):
        assert f"{label}=" in line
    assert f'model_name="{model_path}"' in line
    assert float(line.rpartition(" ")[2]) > 1_600_000_000  # a timestamp: when it was measured
