"""Prompt progress (``GenerationRequest.report_progress``, llama-server's ``return_progress``).

A request that asks for it gets a chunk with ``prompt_processed`` when it is admitted (the tokens
the prefix cache already holds) and after each batch of its prompt is decoded, before its first
generated text; the text itself is what it would be without them.  ``create_completion`` and
``create_chat_completion`` take it as ``return_progress`` and stream llama-server's chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llamacpp_native import Chunk, Llama
from llamacpp_native.events import PromptProgress

N_BATCH = 32
PROMPT = "the quick brown fox jumps over the lazy dog " * 8


@pytest.fixture(scope="module")
def batched(model_path: Path) -> Iterator[Llama]:
    """A model whose batches hold 32 tokens, so that a prompt of 70-odd tokens takes three."""
    with Llama(model_path, n_ctx=512, n_batch=N_BATCH, n_parallel=2, n_threads=1, seed=3) as instance:
        yield instance


def _run(llama: Llama, progress: bool, prompt: str = PROMPT) -> list[Chunk]:
    request = llama.completion_request(prompt, max_tokens=4, temperature=0.0)
    request.report_progress = progress
    return list(llama.engine.stream(request))


def test_progress_comes_only_when_asked(batched: Llama) -> None:
    assert all(chunk.prompt_processed is None for chunk in _run(batched, progress=False))


def test_progress_counts_up_batch_by_batch_before_the_first_text(batched: Llama) -> None:
    batched.engine.wait_idle()
    chunks = _run(batched, progress=True, prompt="A fresh prompt, sharing nothing cached: " + PROMPT)
    n_prompt = chunks[-1].prompt_tokens
    progress = [chunk for chunk in chunks if chunk.prompt_processed is not None]
    first_text = next(i for i, chunk in enumerate(chunks) if chunk.prompt_processed is None)
    assert chunks[:first_text] == progress  # every progress chunk comes before any output
    processed = [chunk.prompt_processed for chunk in progress]
    assert processed[0] == progress[0].cached_tokens  # at admission: what the cache held
    assert processed == sorted(processed) and processed[-1] == n_prompt
    assert len(processed) >= 1 + -(-(n_prompt - processed[0]) // N_BATCH)  # admission, then each batch
    assert all(
        chunk.text == "" and not chunk.tokens and chunk.prompt_tokens == n_prompt for chunk in progress
    )


def test_a_cached_prompt_starts_from_the_cached_tokens(batched: Llama) -> None:
    _run(batched, progress=False)
    progress = [chunk for chunk in _run(batched, progress=True) if chunk.prompt_processed is not None]
    assert progress[0].cached_tokens >= progress[-1].prompt_processed - 1
    assert progress[0].prompt_processed == progress[0].cached_tokens


def test_the_generated_text_is_unchanged_by_progress(batched: Llama) -> None:
    plain = _run(batched, progress=False)
    with_progress = _run(batched, progress=True)
    assert "".join(c.text for c in with_progress) == "".join(c.text for c in plain)
    assert [t for c in with_progress for t in c.tokens] == [t for c in plain for t in c.tokens]


def test_completion_chunks_carry_prompt_progress_before_the_text(batched: Llama) -> None:
    chunks = list(batched.create_completion(PROMPT, max_tokens=3, stream=True, return_progress=True))
    progress = [chunk for chunk in chunks if "prompt_progress" in chunk]
    assert chunks[: len(progress)] == progress and progress
    assert all(chunk["choices"][0]["text"] == "" for chunk in progress)
    last = progress[-1]["prompt_progress"]
    assert set(last) == {"total", "cache", "processed"}
    assert last["processed"] == last["total"] == len(batched.tokenize(PROMPT))


def test_chat_progress_chunks_carry_the_role_and_no_content(batched: Llama) -> None:
    messages = [{"role": "user", "content": "A chat prompt read in batches: " + PROMPT}]
    chunks = list(batched.create_chat_completion(messages, max_tokens=3, stream=True, return_progress=True))
    progress = [chunk for chunk in chunks if "prompt_progress" in chunk]
    assert len(progress) >= 3  # admission, then each of its batches
    assert all(chunk["choices"][0]["delta"] == {"role": "assistant", "content": None} for chunk in progress)
    processed = [chunk["prompt_progress"]["processed"] for chunk in progress]
    assert processed == sorted(processed) and processed[-1] == progress[-1]["prompt_progress"]["total"]
    greedy = {"max_tokens": 3, "temperature": 0.0}
    plain = batched.create_chat_completion(messages, **greedy)
    with_progress = batched.create_chat_completion(messages, return_progress=True, **greedy)
    assert with_progress["choices"][0]["message"] == plain["choices"][0]["message"]


def test_chat_events_report_progress_as_a_typed_event(batched: Llama) -> None:
    messages = [{"role": "user", "content": "Events: " + PROMPT}]
    batches = list(batched.chat_events(messages, max_tokens=2, return_progress=True))
    progress = [event for batch in batches for event in batch if isinstance(event, PromptProgress)]
    assert progress and progress[-1].processed == progress[-1].total
    assert all(len(batch) == 1 for batch in batches if isinstance(batch[0], PromptProgress))
