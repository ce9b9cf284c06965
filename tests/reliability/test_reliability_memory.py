"""Memory: repeated generations and contexts do not grow the process without bound."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

import pytest

from llamacpp_native import Context, Llama

MiB = 1 << 20
PROMPTS = ["1, 2, 3, 4,", "A, B, C, D,", "one, two, three,", "a b c d e f"]


def generate_repeatedly(llama: Llama, n: int, max_tokens: int = 1) -> None:
    for i in range(n):
        llama.create_completion(PROMPTS[i % len(PROMPTS)], max_tokens=max_tokens, temperature=0.0)


def test_two_hundred_generations_leave_rss_nearly_flat(llama: Llama, rss: Callable[[], int]) -> None:
    generate_repeatedly(llama, 10)  # warm up: buffers, caches, the allocator's arenas
    gc.collect()
    before = rss()
    generate_repeatedly(llama, 200)
    gc.collect()
    assert rss() - before < 24 * MiB


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_a_thousand_generations_leave_rss_nearly_flat(llama: Llama, rss: Callable[[], int]) -> None:
    generate_repeatedly(llama, 50, max_tokens=4)
    gc.collect()
    before = rss()
    generate_repeatedly(llama, 1000, max_tokens=4)
    gc.collect()
    assert rss() - before < 32 * MiB


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_five_hundred_chats_and_embeddings_leave_rss_nearly_flat(
    llama: Llama, rss: Callable[[], int]
) -> None:
    def work(n: int) -> None:
        for i in range(n):
            llama.create_chat_completion(
                [{"role": "user", "content": PROMPTS[i % 4]}], max_tokens=2, temperature=0.0
            )
            llama.embed(PROMPTS[i % 4])

    work(25)
    gc.collect()
    before = rss()
    work(500)
    gc.collect()
    assert rss() - before < 32 * MiB


def test_creating_and_closing_ten_contexts_returns_rss_to_its_baseline(
    llama: Llama, rss: Callable[[], int]
) -> None:
    with Context(llama.model, n_ctx=512, n_threads=1) as context:  # warm up
        context.decode(llama.tokenize("1, 2, 3, 4,"))
    gc.collect()
    before = rss()
    for _ in range(10):
        with Context(llama.model, n_ctx=512, n_threads=1) as context:
            context.decode(llama.tokenize("1, 2, 3, 4,"))
    gc.collect()
    # One such context holds well over 100 MiB of buffers: a leaked one would show at once.
    assert rss() - before < 16 * MiB


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@pytest.fixture
def malloc_in_use() -> Callable[[], int]:
    """``malloc_in_use()``: bytes allocated through glibc malloc and not yet freed (skips elsewhere)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2) to count malloc'd bytes")
    libc.mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return in_use


def test_closing_contexts_frees_every_malloc_d_byte(llama: Llama, malloc_in_use: Callable[[], int]) -> None:
    Context(llama.model, n_ctx=64, n_batch=2048, n_seq_max=64, n_threads=1).close()  # warm up
    gc.collect()
    before = malloc_in_use()
    for _ in range(10):
        Context(llama.model, n_ctx=64, n_batch=2048, n_seq_max=64, n_threads=1).close()
    gc.collect()
    assert malloc_in_use() - before < 1 * MiB


def test_contexts_dropped_without_close_free_every_malloc_d_byte(
    llama: Llama, malloc_in_use: Callable[[], int]
) -> None:
    Context(llama.model, n_ctx=64, n_batch=2048, n_seq_max=64, n_threads=1).close()  # warm up
    gc.collect()
    before = malloc_in_use()
    for _ in range(10):
        Context(llama.model, n_ctx=64, n_batch=2048, n_seq_max=64, n_threads=1)
        gc.collect()
    gc.collect()
    assert malloc_in_use() - before < 1 * MiB
