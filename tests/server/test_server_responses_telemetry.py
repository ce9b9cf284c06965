"""llama-server's telemetry on a streamed Responses request: ``return_progress`` (the prompt's
progress in ``response.in_progress`` events, at its start and after each batch) and
``timings_per_token`` (``timings`` on each batch's last event); either one puts ``timings`` on
the final event."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai

HELLO = {"grammar": 'root ::= "Hello there, friend"'}
TIMINGS = {"prompt_n", "prompt_per_second", "predicted_n", "predicted_per_second", "cache_n"}


def _events(http: httpx.Client, **extra: Any) -> list[dict[str, Any]]:
    body = {"input": "Say hello.", "max_output_tokens": 16, "stream": True, **HELLO, **extra}
    with http.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    return [json.loads(line.removeprefix("data: ")) for line in lines]


def _prompt_tokens(events: list[dict[str, Any]]) -> int:
    tokens = events[-1]["response"]["usage"]["input_tokens"]
    assert isinstance(tokens, int)
    return tokens


def test_return_progress_reports_the_prompt_read_before_any_text(http: httpx.Client) -> None:
    events = _events(http, return_progress=True)
    progress = [event for event in events if "prompt_progress" in event]
    assert progress and all(event["type"] == "response.in_progress" for event in progress)
    reports = [event["prompt_progress"] for event in progress]
    assert reports[0]["processed"] == reports[0]["cache"]  # at admission: what the cache held
    assert reports[-1]["total"] == reports[-1]["processed"] == _prompt_tokens(events)
    assert [report["processed"] for report in reports] == sorted(report["processed"] for report in reports)
    assert all(report["time_ms"] >= 0 for report in reports)
    first_text = next(i for i, event in enumerate(events) if event["type"] == "response.output_text.delta")
    assert events.index(progress[-1]) < first_text
    numbers = [event["sequence_number"] for event in events]
    assert numbers == list(range(len(events)))


def test_timings_per_token_count_the_tokens_so_far(http: httpx.Client) -> None:
    events = _events(http, timings_per_token=True)
    timed = [event for event in events if "timings" in event]
    deltas = [event for event in timed if event["type"] == "response.output_text.delta"]
    assert deltas and all(set(event["timings"]) >= TIMINGS for event in timed)
    counts = [event["timings"]["predicted_n"] for event in deltas]
    assert counts == sorted(counts) and counts[0] >= 1
    final = events[-1]
    assert final["type"] == "response.completed"
    usage = final["response"]["usage"]
    assert final["timings"]["predicted_n"] == usage["output_tokens"]
    assert final["timings"]["prompt_n"] + final["timings"]["cache_n"] == usage["input_tokens"]


def test_without_telemetry_the_stream_carries_none(http: httpx.Client) -> None:
    events = _events(http)
    assert not any("timings" in event or "prompt_progress" in event for event in events)


def test_the_openai_client_reads_a_stream_with_telemetry(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="any",
        input="Say hello.",
        max_output_tokens=16,
        extra_body={**HELLO, "return_progress": True, "timings_per_token": True},
    ) as stream:
        list(stream)
        final = stream.get_final_response()
    assert final.output_text == "Hello there, friend"
