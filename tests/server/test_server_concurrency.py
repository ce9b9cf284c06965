"""Many clients at once: streams decode together, light endpoints answer meanwhile, and a
client that goes away frees its slot."""

from __future__ import annotations

import asyncio

import httpx
import openai
from server_support import RunningServer, first_event, metric_values, total, wait_for

LONG = {"max_tokens": 1800, "ignore_eos": True}
"""A generation that would run for a long time: only cancellation ends it early."""


async def _busy_slots(http: httpx.AsyncClient) -> float:
    return total(metric_values((await http.get("/metrics")).text), "llamacpp_busy_slots")


async def _cancelled(http: httpx.AsyncClient) -> float:
    return total(metric_values((await http.get("/metrics")).text), "llamacpp_requests_cancelled_total")


async def _generating(http: httpx.AsyncClient) -> bool:
    return await _busy_slots(http) >= 1


async def _idle(http: httpx.AsyncClient) -> bool:
    """No slot busy and no request holding the model."""
    values = metric_values((await http.get("/metrics")).text)
    return total(values, "llamacpp_busy_slots") == 0 and total(values, "llamacpp_requests_in_flight") == 0


async def test_eight_streams_all_start_before_any_ends_while_models_answers(
    aclient: openai.AsyncOpenAI, model_name: str
) -> None:
    events: list[tuple[str, int]] = []
    all_started = asyncio.Event()

    async def stream(i: int) -> None:
        chunks = await aclient.chat.completions.create(
            model=model_name,
            messages=[{"role": "user", "content": f"Tell story number {i}."}],
            max_tokens=48,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        started = False
        async for chunk in chunks:
            if not started and chunk.choices and chunk.choices[0].delta.content:
                started = True
                events.append(("first token", i))
                if sum(kind == "first token" for kind, _ in events) == 8:
                    all_started.set()
        events.append(("done", i))

    async def list_models() -> None:
        await all_started.wait()
        models = await aclient.models.list()
        events.append(("models answered", len(models.data)))

    async with aclient:
        await asyncio.gather(*(stream(i) for i in range(8)), list_models())
    first_done = events.index(next(e for e in events if e[0] == "done"))
    assert sorted(i for kind, i in events[:first_done] if kind == "first token") == list(range(8))
    assert ("models answered", 1) in events[:first_done]


async def test_closing_a_stream_frees_its_slot(server: RunningServer, model_name: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        cancelled_before = await _cancelled(http)
        body = {"model": model_name, "prompt": "Once upon a time", "stream": True, **LONG}
        async with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.aiter_lines()
            await first_event(lines)
            assert await _busy_slots(http) == 1
        # leaving the block closed the connection mid-stream
        await wait_for(lambda: _idle(http), "the slot and the model released after the client left")
        assert await _cancelled(http) == cancelled_before + 1


async def test_a_client_leaving_a_non_streaming_request_frees_its_slot(
    server: RunningServer, model_name: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        cancelled_before = await _cancelled(http)
        body = {"model": model_name, "messages": [{"role": "user", "content": "Write a long story."}], **LONG}
        request = asyncio.create_task(http.post("/v1/chat/completions", json=body))
        await wait_for(lambda: _generating(http), "the request generating")
        request.cancel()  # the client gives up: httpx closes the connection
        await asyncio.gather(request, return_exceptions=True)
        await wait_for(lambda: _idle(http), "the slot and the model released after the client left")
        assert await _cancelled(http) == cancelled_before + 1
