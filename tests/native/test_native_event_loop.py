"""The async front ends never block the event loop: preparing and running requests happens beside it."""

from __future__ import annotations

import asyncio
import time

from llamacpp_native import Llama

TICK_S = 0.005


async def _tick_delays(work: asyncio.Future[object]) -> list[float]:
    """How late each 5 ms sleep of a ticker task woke up while ``work`` ran."""
    delays: list[float] = []
    while not work.done():
        started = time.perf_counter()
        await asyncio.sleep(TICK_S)
        delays.append(time.perf_counter() - started - TICK_S)
    await work
    return delays


async def test_the_loop_keeps_ticking_while_eight_chats_prepare_and_run(llama: Llama) -> None:
    # long prompts: rendering the template and tokenizing them is real CPU work
    text = " ".join(f"word{i}" for i in range(150))
    messages = [[{"role": "user", "content": f"Request {n}: {text}"}] for n in range(8)]
    work = asyncio.ensure_future(
        asyncio.gather(*(llama.acreate_chat_completion(m, max_tokens=8) for m in messages))
    )
    delays = sorted(await _tick_delays(work))
    replies = work.result()
    assert all(r["choices"][0]["finish_reason"] in ("stop", "length") for r in replies)
    p99 = delays[int(0.99 * (len(delays) - 1))]
    assert p99 <= 0.020, f"p99 tick delay {p99 * 1000:.1f} ms over {len(delays)} ticks"


async def test_the_loop_keeps_ticking_while_completions_stream(llama: Llama) -> None:
    async def consume(n: int) -> int:
        stream = await llama.acreate_completion(f"{n}, {n + 1}, {n + 2},", max_tokens=16, stream=True)
        return sum([1 async for _ in stream])  # type: ignore[union-attr]

    work = asyncio.ensure_future(asyncio.gather(*(consume(n) for n in range(8))))
    delays = sorted(await _tick_delays(work))
    p99 = delays[int(0.99 * (len(delays) - 1))]
    assert p99 <= 0.020, f"p99 tick delay {p99 * 1000:.1f} ms over {len(delays)} ticks"
