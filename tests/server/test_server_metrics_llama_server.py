"""``/metrics`` and ``timings`` as llama-server gives them: its header's exact spelling, its
unlabelled series, its generation rate, and turning ``/metrics`` and ``/slots`` off (501)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server_support import RunningServer, assert_openai_error, metric_values

NO_END = {"ignore_eos": True}

COUNTERS = (
    "prompt_tokens_total",
    "prompt_tokens_cached_total",
    "prompt_seconds_total",
    "tokens_predicted_total",
    "tokens_predicted_seconds_total",
    "n_decode_total",
    "n_tokens_max",
    "spec_decode_num_draft_tokens_total",
    "spec_decode_num_accepted_tokens_total",
    "spec_decode_num_drafts_total",
)
GAUGES = (
    "prompt_tokens_seconds",
    "predicted_tokens_seconds",
    "requests_processing",
    "requests_deferred",
    "n_busy_slots_per_decode",
)


def test_the_start_time_header_keeps_llama_servers_capitals(http: httpx.Client) -> None:
    response = http.get("/metrics")
    assert response.status_code == 200
    # Header names are case-insensitive in HTTP, but llama.cpp's suite looks this one up in a plain dict.
    sent = {name: value for name, value in response.headers.raw}
    assert int(sent[b"Process-Start-Time-Unix"]) > 0


def test_llama_servers_series_are_unlabelled_and_each_name_has_one_help_and_type(
    http: httpx.Client, model_name: str
) -> None:
    body = {"model": model_name, "prompt": "I believe", "max_tokens": 8, **NO_END}
    assert http.post("/v1/completions", json=body).status_code == 200
    text = http.get("/metrics").text
    declared = [line.split(" ")[2:4] for line in text.splitlines() if line.startswith("# TYPE ")]
    kinds = dict(declared)
    assert len(kinds) == len(declared)  # no name declared twice: Prometheus would refuse the page
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(line.split("{")[0].split(" ")[0] in kinds for line in samples)
    values = metric_values(text)
    for names, kind in ((COUNTERS, "counter"), (GAUGES, "gauge")):
        for name in names:
            assert kinds[f"llamacpp:{name}"] == kind
            assert f"# HELP llamacpp:{name} " in text
            assert f"llamacpp:{name}" in values  # the unlabelled sample llama-server's clients read
    assert values["llamacpp:n_decode_total"] > 0
    assert values["llamacpp:n_busy_slots_per_decode"] >= 1
    assert values["llamacpp:n_tokens_max"] >= 8
    assert values["llamacpp:prompt_seconds_total"] > 0
    assert values["llamacpp:tokens_predicted_seconds_total"] > 0
    assert values["llamacpp:requests_processing"] == values["llamacpp:requests_deferred"] == 0


def test_prompt_tokens_decoded_are_counted_apart_from_those_the_cache_gave(
    http: httpx.Client, model_name: str
) -> None:
    before = metric_values(http.get("/metrics").text)
    body = {"model": model_name, "prompt": "the quick brown fox jumps over the lazy dog", "max_tokens": 4}
    processed = cached = 0
    for _ in range(2):
        usage = http.post("/v1/completions", json=body).json()["usage"]
        from_cache = usage["prompt_tokens_details"]["cached_tokens"]
        processed += usage["prompt_tokens"] - from_cache
        cached += from_cache
    assert cached > 0  # the second request reused the first one's prompt
    after = metric_values(http.get("/metrics").text)
    growth = {name: after[f"llamacpp:{name}"] - before[f"llamacpp:{name}"] for name in COUNTERS}
    assert growth["prompt_tokens_total"] == processed
    assert growth["prompt_tokens_cached_total"] == cached


def test_tokens_predicted_total_counts_every_generated_token(http: httpx.Client) -> None:
    before = metric_values(http.get("/metrics").text)["llamacpp:tokens_predicted_total"]
    predicted = 0
    for n_predict in (1, 4):
        result = http.post("/completion", json={"prompt": "I believe", "n_predict": n_predict, **NO_END})
        predicted += result.json()["timings"]["predicted_n"]
    after = metric_values(http.get("/metrics").text)
    assert after["llamacpp:tokens_predicted_total"] == before + predicted == before + 5
    assert after["llamacpp:spec_decode_num_draft_tokens_total"] == 0  # no speculative decoding here


def test_the_generation_rate_leaves_out_the_first_token(http: httpx.Client) -> None:
    # The first token comes from the prompt's last batch: it costs no decode step of its own.
    one = http.post("/completion", json={"prompt": "I believe", "n_predict": 1, **NO_END}).json()["timings"]
    assert one["predicted_n"] == 1
    assert one["predicted_per_second"] == 0.0 and one["predicted_per_token_ms"] == 0.0
    eight = http.post("/completion", json={"prompt": "I believe", "n_predict": 8, **NO_END}).json()["timings"]
    assert eight["predicted_n"] == 8
    assert math.isclose(eight["predicted_per_second"], 7 * 1000 / eight["predicted_ms"], rel_tol=1e-9)
    assert math.isclose(eight["predicted_per_token_ms"], eight["predicted_ms"] / 7, rel_tol=1e-9)


@pytest.fixture(scope="module")
def endpoints_off(start_server: Callable[..., RunningServer], model_path: Path) -> RunningServer:
    """A server started without ``/metrics`` and ``/slots``."""
    return start_server(
        "--model", str(model_path), "--n_ctx", "512", "--n_parallel", "1", "--n_threads", "2",
        "--metrics_endpoint", "false", "--slots_endpoint", "false",
    )  # fmt: skip


@pytest.mark.parametrize("path", ["/metrics", "/slots"])
def test_an_endpoint_turned_off_answers_501_not_supported(endpoints_off: RunningServer, path: str) -> None:
    response = httpx.get(f"{endpoints_off.url}{path}")
    error = assert_openai_error(response, 501, "endpoint_disabled")
    assert error["type"] == "not_supported_error"
    assert "_endpoint true" in error["message"]  # says which setting turns it on
    assert httpx.get(f"{endpoints_off.url}/health").status_code == 200  # the rest is served
