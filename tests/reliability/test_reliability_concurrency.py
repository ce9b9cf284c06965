"""Concurrency: one Llama shared by threads and tasks gives the single-threaded answers."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llamacpp_native import Llama, LlamaError

Call = tuple[str, str]
CALLS: list[Call] = [
    ("completion", "1, 2, 3, 4,"),
    ("chat", "Count to ten again."),
    ("embedding", "a small cat"),
    ("completion", "A, B, C, D,"),
]
"""Greedy calls whose answers have no near-ties, so that any batch or cache state gives the same text."""

COUNTING_CHAT = [
    {"role": "user", "content": "Count to ten."},
    {"role": "assistant", "content": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10"},
]


def run(llama: Llama, call: Call) -> Any:
    kind, text = call
    if kind == "completion":
        return llama.create_completion(text, max_tokens=6, temperature=0.0)["choices"][0]["text"]  # type: ignore[index]
    if kind == "chat":
        messages = [*COUNTING_CHAT, {"role": "user", "content": text}]
        result = llama.create_chat_completion(messages, max_tokens=6, temperature=0.0)
        return result["choices"][0]["message"]["content"]  # type: ignore[index]
    return llama.embed(text)


def assert_same(actual: Any, expected: Any) -> None:
    if isinstance(expected, list):
        assert actual == pytest.approx(expected, rel=1e-4, abs=1e-4)
    else:
        assert actual == expected


@pytest.fixture(scope="module")
def expected(llama: Llama) -> dict[Call, Any]:
    """Each call's answer, run alone."""
    return {call: run(llama, call) for call in CALLS}


def test_eight_threads_sharing_one_llama_get_the_single_threaded_answers(
    llama: Llama, expected: dict[Call, Any]
) -> None:
    work = [CALLS[(thread + i) % len(CALLS)] for thread in range(8) for i in range(len(CALLS))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda call: run(llama, call), work))
    assert len(answers) == 32
    for call, answer in zip(work, answers, strict=True):
        assert_same(answer, expected[call])


async def test_asyncio_tasks_in_threads_get_the_single_threaded_answers(
    llama: Llama, expected: dict[Call, Any]
) -> None:
    work = CALLS * 3
    answers = await asyncio.gather(*(asyncio.to_thread(run, llama, call) for call in work))
    for call, answer in zip(work, answers, strict=True):
        assert_same(answer, expected[call])


def test_parallel_batches_from_several_threads_do_not_mix_their_prompts(llama: Llama) -> None:
    prompts = [["1, 2, 3, 4,", "A, B, C, D,"], ["one, two, three,", "2, 4, 6, 8,"]]
    alone = [[r.text for r in llama.create_completions(p, max_tokens=4, temperature=0.0)] for p in prompts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(
            pool.map(
                lambda p: [r.text for r in llama.create_completions(p, max_tokens=4, temperature=0.0)],
                prompts * 2,
            )
        )
    assert together == alone * 2


def test_a_request_from_another_thread_waits_for_an_open_stream_without_corrupting_it(llama: Llama) -> None:
    stream_alone = "".join(
        c["choices"][0]["text"]
        for c in llama.create_completion("a b c d e f", max_tokens=8, temperature=0.0, stream=True)  # type: ignore[union-attr]
    )
    other_alone = run(llama, ("completion", "1, 2, 3, 4,"))
    stream = llama.create_completion("a b c d e f", max_tokens=8, temperature=0.0, stream=True)
    texts = [next(stream)["choices"][0]["text"]]  # type: ignore[call-overload]
    other: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: other.update(result=run(llama, ("completion", "1, 2, 3, 4,"))))
    worker.start()
    texts.extend(c["choices"][0]["text"] for c in stream)  # type: ignore[union-attr]
    worker.join(120)
    assert "".join(texts) == stream_alone
    assert other["result"] == other_alone


def test_a_second_request_in_the_thread_of_an_open_stream_does_not_deadlock(model_path: Path) -> None:
    instance = Llama(model_path, n_ctx=64, n_parallel=1, n_threads=1)
    opened = threading.Event()
    state: dict[str, Any] = {}

    def same_thread() -> None:
        stream = instance.create_completion("1, 2, 3, 4,", max_tokens=16, temperature=0.0, stream=True)
        next(stream)  # type: ignore[call-overload]
        state["stream"] = stream
        opened.set()
        try:
            state["result"] = instance.create_completion("A, B, C, D,", max_tokens=1, temperature=0.0)
        except LlamaError as error:  # a clear refusal is as good as an answer
            state["result"] = error

    worker = threading.Thread(target=same_thread, daemon=True)
    worker.start()
    assert opened.wait(120)
    worker.join(5)
    finished = not worker.is_alive()
    if not finished:
        state["stream"].close()  # releases the engine, so the worker (and this test) can end
        worker.join(120)
    instance.close()
    assert finished, "the second request was still blocked 5 s after it started"
    assert "result" in state
