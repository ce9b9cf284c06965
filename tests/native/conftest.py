"""Fixtures for the native layer's tests.

Most tests use the shared session ``llama`` (tests/conftest.py).  Greedy tests
use prompts whose continuation the model is sure of (counting, the alphabet):
greedy output may legitimately change when a near-tie between two tokens meets
the small numeric differences of another batch size, so only prompts without
near-ties make a stable specification.

``llama`` is overridden here with the shared fixture's settings plus one
thread: on small shared machines llama.cpp's thread pool slows down several-fold
when one of its threads waits for a busy core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llamacpp_native import Llama, Model, Vocab

Complete = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def llama(model_path: Path) -> Iterator[Llama]:
    """The shared settings (n_ctx 2048, 4 slots, seed 1234) on one thread; tests must leave it usable."""
    with Llama(model_path, n_ctx=2048, n_parallel=4, seed=1234, n_threads=1) as instance:
        yield instance


@pytest.fixture(scope="session")
def vocab(llama: Llama) -> Vocab:
    """The shared model's vocabulary."""
    return llama.model.vocab


@pytest.fixture(scope="session")
def greedy(llama: Llama) -> Complete:
    """``greedy(prompt, **kwargs)``: a temperature-0 completion on the shared model (8 tokens unless told)."""

    def complete(prompt: Any, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("max_tokens", 8)
        result = llama.create_completion(prompt, temperature=0.0, **kwargs)
        assert isinstance(result, dict)
        return result

    return complete


@pytest.fixture
def own_model(model_path: Path) -> Iterator[Model]:
    """A private copy of the model that a test may close (the shared one must stay open)."""
    model = Model(model_path)
    yield model
    model.close()


@pytest.fixture(scope="module")
def small_llama(model_path: Path) -> Iterator[Llama]:
    """A second ``Llama`` with a 128-token window and one slot, for limits of the window."""
    with Llama(model_path, n_ctx=128, n_parallel=1, n_threads=1, seed=7) as instance:
        yield instance
