"""Speculative decoding on the server: ``--spec_type ngram`` and ``--model_draft`` (llama-server's
``--spec-type`` and ``--model-draft``), with the guesses counted in usage, timings and /metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import RunningServer, metric_values, total

CODE = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n"
COPY = f"Repeat this code exactly:\n{CODE}\nHere it is again:\n"


def flags(model_path: Path, *extra: str) -> list[str]:
    return ["--model", str(model_path), "--n_ctx", "1024", "--n_parallel", "2", "--n_threads", "2", *extra]


@pytest.fixture(scope="module")
def ngram_server(start_server: Callable[..., RunningServer], model_path: Path) -> RunningServer:
    return start_server(*flags(model_path, "--spec_type", "ngram", "--draft_max", "8"))


def copy_completion(url: str, **extra: Any) -> dict[str, Any]:
    body = {"prompt": COPY, "max_tokens": 20, "temperature": 0, **extra}
    with httpx.Client(base_url=url, timeout=120) as http:
        response = http.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())


def test_guesses_are_counted_in_usage_timings_and_metrics(ngram_server: RunningServer) -> None:
    answer = copy_completion(ngram_server.url)
    details = answer["usage"]["completion_tokens_details"]
    assert details["accepted_prediction_tokens"] > 0
    assert answer["timings"]["draft_n_accepted"] == details["accepted_prediction_tokens"]
    verified = details["accepted_prediction_tokens"] + details["rejected_prediction_tokens"]
    assert answer["timings"]["draft_n"] == verified
    metrics = metric_values(httpx.get(f"{ngram_server.url}/metrics", timeout=30).text)
    assert total(metrics, "vllm:spec_decode_num_accepted_tokens") >= details["accepted_prediction_tokens"]
    assert total(metrics, "vllm:spec_decode_num_draft_tokens") >= answer["timings"]["draft_n"]
    assert 0 < total(metrics, "llamacpp:draft_acceptance_ratio") <= 1
    drafts = total(metrics, "llamacpp:spec_decode_num_drafts_total")
    assert 0 < drafts <= total(metrics, "llamacpp:spec_decode_num_draft_tokens_total")


def test_llama_cpps_native_completion_reports_the_guesses(ngram_server: RunningServer) -> None:
    body = {"prompt": COPY, "n_predict": 20, "temperature": 0}
    answer = httpx.post(f"{ngram_server.url}/completion", json=body, timeout=120).json()
    assert answer["tokens_predicted"] == 20
    assert answer["timings"]["draft_n"] >= answer["timings"]["draft_n_accepted"] > 0


def test_a_stream_ends_with_the_same_text_and_usage(ngram_server: RunningServer) -> None:
    whole = copy_completion(ngram_server.url)
    body = {"prompt": COPY, "max_tokens": 20, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    text, usage = [], None
    with httpx.stream("POST", f"{ngram_server.url}/v1/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                text.extend(choice["text"] for choice in chunk["choices"])
                usage = chunk.get("usage") or usage
    assert "".join(text) == whole["choices"][0]["text"]
    assert usage is not None and usage["completion_tokens_details"]["accepted_prediction_tokens"] > 0


def test_a_draft_model_server_answers_as_the_plain_one(
    start_server: Callable[..., RunningServer], model_path: Path, ngram_server: RunningServer
) -> None:
    drafted = start_server(*flags(model_path, "--model_draft", str(model_path), "--draft_max", "4"))
    answer = copy_completion(drafted.url)
    assert answer["choices"][0]["text"] == copy_completion(ngram_server.url)["choices"][0]["text"]
    assert answer["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > 0
    drafted.stop()


@pytest.mark.parametrize(
    ("extra", "reason"),
    [(["--spec_type", "draft"], "--model_draft"), (["--model_draft", "/no/such/draft.gguf"], "not found")],
)
def test_bad_speculative_flags_are_refused_at_start(
    model_path: Path, tmp_path: Path, extra: list[str], reason: str
) -> None:
    server = RunningServer(flags(model_path, *extra), tmp_path / "server.log", None)
    assert server.process.wait(timeout=120) != 0
    assert reason in server.log()
