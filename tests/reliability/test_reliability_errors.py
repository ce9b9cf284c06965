"""Errors under concurrency: each failing call carries llama.cpp's reason for that call.

llama.cpp explains most failures only in its log.  These tests make threads fail
different native calls at the same moment and check that every exception quotes its
own call's reason, never another thread's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from llamacpp_native import GrammarError, Llama, Model, ModelLoadError
from tiny_models import alien_model

LEFT_RECURSIVE = 'root ::= x\nx ::= x "a"'
"""Parses, but llama.cpp refuses it while building the grammar, with the reason only in its log."""

ROUNDS = 12


def failure_of(call: Callable[[], object]) -> Exception:
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the test inspects whatever it is
        return error
    raise AssertionError("the call was expected to fail")


def run_together(calls: dict[str, Callable[[], object]]) -> dict[str, list[Exception]]:
    """Run each call ROUNDS times in its own thread, every round starting at one barrier."""
    barrier = threading.Barrier(len(calls))
    failures: dict[str, list[Exception]] = {name: [] for name in calls}

    def worker(name: str) -> None:
        for _ in range(ROUNDS):
            barrier.wait(timeout=60)
            failures[name].append(failure_of(calls[name]))

    threads = [threading.Thread(target=worker, args=(name,)) for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    return failures


def test_threads_failing_at_once_each_get_their_own_reason(llama: Llama, tmp_path: Path) -> None:
    first = alien_model(tmp_path / "first.gguf", "alien-first")
    second = alien_model(tmp_path / "second.gguf", "alien-second")
    failures = run_together(
        {
            "first": lambda: Model(first),
            "second": lambda: Model(second),
            "grammar": lambda: llama.create_completion("x", grammar=LEFT_RECURSIVE, max_tokens=2),
        }
    )
    for error in failures["first"]:
        assert isinstance(error, ModelLoadError)
        assert "unknown model architecture: 'alien-first'" in str(error)
        assert "alien-second" not in str(error) and "left recursion" not in str(error)
    for error in failures["second"]:
        assert isinstance(error, ModelLoadError)
        assert "unknown model architecture: 'alien-second'" in str(error)
        assert "alien-first" not in str(error) and "left recursion" not in str(error)
    for error in failures["grammar"]:
        assert isinstance(error, GrammarError)
        assert "left recursion detected" in str(error)
        assert "architecture" not in str(error)


def test_a_failure_does_not_quote_an_earlier_failure_on_the_same_thread(llama: Llama, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="alien-earlier"):
        Model(alien_model(tmp_path / "earlier.gguf", "alien-earlier"))
    with pytest.raises(GrammarError) as caught:
        llama.create_completion("x", grammar=LEFT_RECURSIVE, max_tokens=2)
    assert "alien-earlier" not in str(caught.value)
    with pytest.raises(ModelLoadError) as loaded:
        Model(alien_model(tmp_path / "later.gguf", "alien-later"))
    assert "left recursion" not in str(loaded.value) and "alien-earlier" not in str(loaded.value)


def test_the_shared_model_still_works_after_the_concurrent_failures(llama: Llama) -> None:
    result = llama.create_completion("1, 2, 3, 4,", max_tokens=4, temperature=0.0)
    assert isinstance(result, dict)
    assert result["choices"][0]["text"].startswith(" 5")
