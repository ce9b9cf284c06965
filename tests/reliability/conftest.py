"""Fixtures for the reliability tests: bad input, concurrency, cancellation, memory.

``llama`` is overridden here with the shared fixture's settings plus one
thread: on small shared machines llama.cpp's thread pool slows down several-fold
when one of its threads waits for a busy core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llamacpp_native import Llama

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="session")
def llama(model_path: Path) -> Iterator[Llama]:
    """The shared settings (n_ctx 2048, 4 slots, seed 1234) on one thread; tests must leave it usable."""
    with Llama(model_path, n_ctx=2048, n_parallel=4, seed=1234, n_threads=1) as instance:
        yield instance


@pytest.fixture
def rss() -> Callable[[], int]:
    """``rss()``: the resident set size of this process in bytes, from /proc/self/statm."""

    def read() -> int:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE

    return read


@pytest.fixture
def run_python(model_path: Path) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """Run a script in a fresh interpreter (for behaviour that could take the process down).

    The script sees ``MODEL_PATH``; its exit status and output come back.
    """

    def run(script: str) -> subprocess.CompletedProcess[str]:
        source = f"MODEL_PATH = {str(model_path)!r}\n" + textwrap.dedent(script)
        return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=180)

    return run
