"""Shared fixtures: the real default model, built once per session and cached."""

from __future__ import annotations

import os

# Waiting OpenMP threads sleep instead of spinning: the suite shares two cores
# with notebook kernels and worker threads, and spinning threads starve them.
# (Set before llama.cpp is loaded; users' processes keep OpenMP's default.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from llamacpp_native import Llama  # noqa: E402


@pytest.fixture(scope="session")
def model_path() -> Path:
    """Path of the default real model (Gemma 3 270M Q4_K_M), assembled once and cached."""
    from llamacpp_integrations.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def llama(model_path: Path) -> Iterator[Llama]:
    """One shared ``Llama`` on the default model (tests must leave it usable)."""
    with Llama(model_path, n_ctx=2048, n_parallel=4, seed=1234) as instance:
        yield instance
