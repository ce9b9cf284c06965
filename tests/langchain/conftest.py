"""Settings every LangChain test shares, so that all of them share one loaded model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def lc_params(model_path: Path) -> dict[str, Any]:
    """Constructor arguments for the real default model: greedy, short, quiet.

    One thread: the test machines are small and shared, and llama.cpp's thread
    pool slows down sharply when its threads must wait for a busy core.
    """
    return {
        "model_path": str(model_path),
        "n_ctx": 1024,
        "n_threads": 1,
        "verbose": False,
        "seed": 1234,
        "temperature": 0.0,
        "max_tokens": 24,
    }
