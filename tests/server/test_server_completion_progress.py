"""``return_progress`` and ``timings_per_token``, as llama-server streams them, on ``/completion``
and on the OpenAI routes.

With ``return_progress`` a streamed completion sends an event with ``prompt_progress`` (``total``,
``cache``, ``processed``, ``time_ms``) when its prompt starts and after each batch of it, before any
text; with ``timings_per_token`` every event carries ``timings``, which never go backwards.  On
``/v1/chat/completions`` and ``/v1/completions`` the progress chunks are the route's own chunks
(a chat's carry the assistant role and no content).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from server_support import sse_data

# Over 512 tokens (the server's default batch), so the prompt takes more than one batch.
PROMPT = "Once upon a time in a land far away, a brave knight travelled across mountains. " * 40


def _stream(http: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    body = {"prompt": PROMPT, "n_predict": 3, "temperature": 0, "stream": True, **body}
    with http.stream("POST", "/completion", json=body) as response:
        assert response.status_code == 200
        return [json.loads(data) for data in sse_data(list(response.iter_lines()))]


def test_progress_events_count_the_prompt_up_before_the_text(http: httpx.Client) -> None:
    http.post("/completion", json={"prompt": "Something else entirely.", "n_predict": 1})  # no prefix cached
    events = _stream(http, return_progress=True, timings_per_token=True)
    progress = [event for event in events if "prompt_progress" in event]
    assert len(progress) > 2  # admission, then one per batch
    assert events[: len(progress)] == progress
    total = events[-1]["tokens_evaluated"]
    first = progress[0]
    assert first["prompt_progress"]["processed"] == first["prompt_progress"]["cache"]
    assert first["timings"]["prompt_n"] == 0 and first["timings"]["prompt_ms"] == 0.0
    assert first["timings"]["predicted_n"] == 0
    processed = [event["prompt_progress"]["processed"] for event in progress]
    assert processed == sorted(processed) and processed[-1] == total
    assert all(event["prompt_progress"]["total"] == total for event in progress)
    assert all(event["content"] == "" and event["tokens"] == [] for event in progress)
    prompt_ms = [event["timings"]["prompt_ms"] for event in progress]
    assert prompt_ms == sorted(prompt_ms) and prompt_ms[-1] > 0
    for event in events:
        assert all(value is not None and value >= 0 for value in event["timings"].values())
    assert events[-1]["stop"] is True and events[-1]["tokens_predicted"] == 3


def test_without_return_progress_no_event_carries_progress(http: httpx.Client) -> None:
    events = _stream(http, timings_per_token=True)
    assert not any("prompt_progress" in event for event in events)
    assert all("timings" in event for event in events)
    assert not any("timings" in event for event in _stream(http)[:-1])  # only the final object's


def _openai_stream(http: httpx.Client, path: str, **body: Any) -> list[dict[str, Any]]:
    body = {"max_tokens": 2, "temperature": 0, "stream": True, "return_progress": True, **body}
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        return [json.loads(data) for data in sse_data(list(response.iter_lines())) if data != "[DONE]"]


def test_a_chat_stream_reports_prompt_progress_before_its_text(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "A chat about it: " + PROMPT}]
    chunks = _openai_stream(http, "/v1/chat/completions", messages=messages)
    progress = [chunk for chunk in chunks if "prompt_progress" in chunk]
    assert len(progress) > 2
    assert chunks[1 : 1 + len(progress)] == progress  # after the role chunk, before any text
    assert all(chunk["choices"][0]["delta"] == {"role": "assistant", "content": None} for chunk in progress)
    last = progress[-1]["prompt_progress"]
    assert set(last) == {"total", "cache", "processed", "time_ms"}
    assert last["processed"] == last["total"]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)


def test_a_completion_stream_reports_prompt_progress(http: httpx.Client) -> None:
    chunks = _openai_stream(http, "/v1/completions", prompt="Completions: " + PROMPT)
    progress = [chunk for chunk in chunks if "prompt_progress" in chunk]
    assert progress and chunks[: len(progress)] == progress
    assert all(chunk["choices"][0]["text"] == "" for chunk in progress)
    assert progress[-1]["prompt_progress"]["processed"] == progress[-1]["prompt_progress"]["total"]


def test_progress_is_only_sent_when_asked(http: httpx.Client) -> None:
    chunks = _openai_stream(http, "/v1/completions", prompt=PROMPT, return_progress=False)
    assert not any("prompt_progress" in chunk for chunk in chunks)
