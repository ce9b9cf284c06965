"""The engine's scheduler on the real model: every caller is served at once.

Concurrency is shown by the order of events (every stream's first token comes
before any stream's last), never by timing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llamacpp_native import ClosedError, ContextOverflowError, GenerationCancelled, GenerationRequest, Llama

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "London", "Rome"]}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def server_llama(model_path: Path) -> Iterator[Llama]:
    """A model with 8 slots, as a server would load it."""
    with Llama(model_path, n_ctx=4096, n_parallel=8, n_threads=2, seed=11) as instance:
        yield instance


@pytest.fixture(scope="module")
def no_end(server_llama: Llama) -> dict[int, float]:
    """A logit bias under which nothing ends before its max_tokens."""
    end_of_turn = server_llama.tokenize("<end_of_turn>", add_bos=False, special=True)[0]
    return {server_llama.token_eos(): -100.0, end_of_turn: -100.0}


class EventLog:
    """Thread-safe record of ("first" | "last", stream name) in the order they happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, str]] = []

    def add(self, kind: str, name: str) -> None:
        with self._lock:
            self.events.append((kind, name))

    def all_started_before_any_finished(self) -> bool:
        kinds = [kind for kind, _name in self.events]
        return "last" not in kinds[: kinds.count("first")]


def _run_threads(jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run each job in its own thread, all released together; results or errors by name."""
    results: dict[str, Any] = {}
    start = threading.Barrier(len(jobs))

    def run(name: str, job: Callable[[], Any]) -> None:
        start.wait()
        try:
            results[name] = job()
        except BaseException as error:  # the test inspects it
            results[name] = error

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return results


def test_eight_threads_with_mixed_requests_are_served_at_once(
    server_llama: Llama, no_end: dict[int, float]
) -> None:
    log = EventLog()

    def streamed(name: str, chunks: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
        collected = []
        for chunk in chunks:
            if not collected:
                log.add("first", name)
            collected.append(chunk)
        log.add("last", name)
        return collected

    def completion(i: int) -> Callable[[], Any]:
        return lambda: streamed(
            f"completion{i}",
            server_llama.create_completion(
                f"Story {i}: Once upon a time", max_tokens=24, stream=True, seed=i, logit_bias=no_end
            ),
        )

    def chat(i: int) -> Callable[[], Any]:
        messages = [{"role": "user", "content": f"Tell me fact number {i} about the sea."}]
        return lambda: streamed(
            f"chat{i}",
            server_llama.create_chat_completion(messages, max_tokens=24, stream=True, logit_bias=no_end),
        )

    def tool() -> Any:
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        chunks = server_llama.create_chat_completion(
            messages,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=48,
            stream=True,
        )
        return streamed("tool", chunks)

    def logprobs() -> Any:
        chunks = server_llama.create_completion(
            "1, 2, 3,", max_tokens=24, logprobs=2, stream=True, logit_bias=no_end
        )
        return streamed("logprobs", chunks)

    jobs = {f"completion{i}": completion(i) for i in range(3)}
    jobs |= {f"chat{i}": chat(i) for i in range(3)}
    jobs |= {"tool": tool, "logprobs": logprobs}
    results = _run_threads(jobs)

    assert not [r for r in results.values() if isinstance(r, BaseException)], results
    for i in range(3):
        completion_chunks = results[f"completion{i}"]
        assert completion_chunks[-1]["usage"]["completion_tokens"] == 24
        assert completion_chunks[-1]["choices"][0]["finish_reason"] == "length"
        chat_chunks = results[f"chat{i}"]
        assert chat_chunks[-1]["usage"]["completion_tokens"] == 24
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chat_chunks)
    calls = [call for c in results["tool"] for call in c["choices"][0]["delta"].get("tool_calls") or []]
    assert results["tool"][-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert calls[0]["function"]["name"] == "get_weather"
    assert isinstance(json.loads("".join(c["function"]["arguments"] for c in calls)), dict)
    tokens = [
        t
        for c in results["logprobs"]
        if c["choices"][0]["logprobs"]
        for t in c["choices"][0]["logprobs"]["tokens"]
    ]
    assert len(tokens) == 24
    assert log.all_started_before_any_finished(), log.events


def test_a_cancelled_queued_request_is_never_decoded(small_llama: Llama) -> None:
    engine = small_llama.engine  # one slot: the second request waits
    busy = engine.submit(small_llama.completion_request("Once upon a time", max_tokens=40))
    busy_chunks = iter(busy)
    next(busy_chunks)  # it holds the slot now
    marker = small_llama.tokenize(" zebra xylophone quantum", add_bos=False)
    queued = engine.submit(GenerationRequest([small_llama.model.vocab.bos, *marker], max_tokens=4))
    assert engine.stats()["queued"] == 1
    queued.cancel()
    assert engine.stats()["queued"] == 0
    with pytest.raises(GenerationCancelled):
        next(iter(queued))
    assert list(busy_chunks)[-1].finish_reason is not None
    assert engine.wait_idle(timeout=60)
    held = [slot.tokens for slot in engine.slots]
    assert not any(marker[0] in tokens for tokens in held)  # its prompt never reached the KV cache


def test_cancelling_mid_stream_frees_the_slot_for_the_next_request(small_llama: Llama) -> None:
    engine = small_llama.engine
    stream = engine.submit(small_llama.completion_request("Once upon a time", max_tokens=100))
    next(iter(stream))
    stream.cancel()
    assert engine.wait_idle(timeout=60)
    assert engine.stats()["busy_slots"] == 0
    result = small_llama.create_completion("1, 2, 3,", max_tokens=4, temperature=0.0)
    assert result["usage"]["completion_tokens"] == 4


def test_dropping_an_unread_stream_frees_its_slot(small_llama: Llama) -> None:
    stream = small_llama.create_completion("Once upon a time", max_tokens=100, stream=True)
    next(stream)
    del stream
    assert small_llama.engine.wait_idle(timeout=60)


def test_closing_while_four_threads_generate_gives_each_a_closed_error(model_path: Path) -> None:
    llama = Llama(model_path, n_ctx=1024, n_parallel=4, n_threads=1)
    started = threading.Barrier(5)

    def generate(i: int) -> Callable[[], Any]:
        def run() -> Any:
            bias = {llama.token_eos(): -100.0}
            chunks = llama.create_completion(f"Story {i}:", max_tokens=500, stream=True, logit_bias=bias)
            first = next(chunks)
            started.wait()
            return [first, *chunks]

        return run

    closer = threading.Thread(target=lambda: (started.wait(), llama.close()))
    closer.start()
    results = _run_threads({str(i): generate(i) for i in range(4)})
    closer.join()
    assert all(isinstance(r, ClosedError) for r in results.values()), results
    with pytest.raises(ClosedError):
        llama.create_completion("again", max_tokens=2)


def test_a_reader_that_stops_reading_does_not_hold_up_the_others(
    server_llama: Llama, no_end: dict[int, float]
) -> None:
    # The slow stream is asked for more than a reader may leave unread: the engine
    # pauses it, and the fast stream runs to its end while nobody reads the slow one.
    slow = server_llama.create_completion("Slow story:", max_tokens=200, stream=True, logit_bias=no_end)
    next(slow)
    fast = list(server_llama.create_completion("Fast story:", max_tokens=40, stream=True, logit_bias=no_end))
    assert fast[-1]["usage"]["completion_tokens"] == 40
    rest = list(slow)
    assert rest[-1]["usage"]["completion_tokens"] == 200  # and the paused stream resumes intact


def test_kv_pressure_every_request_finishes_or_is_refused_at_submit(model_path: Path) -> None:
    with Llama(model_path, n_ctx=512, n_parallel=4, n_threads=1) as llama:
        prompts = [f"Request {i}: " + "the quick brown fox jumps over the lazy dog " * 6 for i in range(16)]
        results = _run_threads(
            {
                str(i): (lambda p=p: llama.create_completion(p, max_tokens=48, temperature=0.0))
                for i, p in enumerate(prompts)
            }
        )
        assert not [r for r in results.values() if isinstance(r, BaseException)], results
        assert all(r["usage"]["completion_tokens"] > 0 for r in results.values())
        with pytest.raises(ContextOverflowError, match="context window is 512 tokens"):
            llama.create_completion("word " * 600, max_tokens=4)


async def test_async_streams_run_together_without_worker_threads(server_llama: Llama) -> None:
    threads_before = threading.active_count()
    log = EventLog()

    async def one(i: int) -> str:
        bias = {server_llama.token_eos(): -100.0}
        chunks = await server_llama.acreate_completion(
            f"Poem {i}:", max_tokens=16, stream=True, logit_bias=bias
        )
        text = ""
        async for chunk in chunks:
            if not text:
                log.add("first", str(i))
                assert threading.active_count() <= threads_before  # no thread per waiting request
            text += chunk["choices"][0]["text"] or " "
        log.add("last", str(i))
        return text

    texts = await asyncio.gather(*(one(i) for i in range(6)))
    assert all(texts)
    assert log.all_started_before_any_finished(), log.events


async def test_cancelling_an_async_task_frees_its_sequence(server_llama: Llama) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        chunks = await server_llama.acreate_completion("Once upon a time", max_tokens=400, stream=True)
        async for _chunk in chunks:
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert server_llama.engine.wait_idle(timeout=60)


def test_a_shared_system_prompt_is_decoded_once(server_llama: Llama) -> None:
    system = "You are a helpful assistant who answers in one short sentence. " * 4
    server_llama.create_chat_completion(
        [{"role": "system", "content": system}, {"role": "user", "content": "Name a color."}], max_tokens=4
    )
    second = server_llama.create_chat_completion(
        [{"role": "system", "content": system}, {"role": "user", "content": "Name an animal."}], max_tokens=4
    )
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= len(server_llama.tokenize(system)) - 1
