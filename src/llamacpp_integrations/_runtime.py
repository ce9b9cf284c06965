"""What both framework integrations share: loaded models, and async over native work.

Integrations hold no C knowledge; they reach llama.cpp only through
``llamacpp_native.Llama``.  Models are loaded lazily and shared between every
integration object that names the same file with the same load settings.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any, TypeVar

from llamacpp_native import Cancellation, Llama

T = TypeVar("T")
_cache: dict[tuple[str, tuple[tuple[str, Any], ...]], Llama] = {}
_cache_lock = threading.Lock()


def shared_llama(model_path: str | os.PathLike[str], settings: Mapping[str, Any]) -> Llama:
    """The ``Llama`` for this file and these load settings, loading it on first use."""
    if not model_path:
        raise ValueError("model_path is required: the path of a local .gguf file (nothing is downloaded)")
    # verbose only changes logging, so it does not make a different model
    key = (
        os.path.realpath(model_path),
        tuple(sorted((k, _hashable(v)) for k, v in settings.items() if k != "verbose")),
    )
    with _cache_lock:
        llama = _cache.get(key)
        if llama is None or llama.model.closed:
            llama = Llama(model_path, **settings)
            _cache[key] = llama
        return llama


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return tuple(sorted(value.items()))
    return value


def release_shared_models() -> None:
    """Close every shared model (for tests and long-running apps that reload)."""
    with _cache_lock:
        for llama in _cache.values():
            llama.close()
        _cache.clear()


async def run_blocking(function: Callable[[Cancellation], T]) -> T:
    """Run native work in a thread without blocking the event loop; cancelling stops it."""
    cancellation = Cancellation()
    task = asyncio.ensure_future(asyncio.to_thread(function, cancellation))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        cancellation.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise


async def iterate_blocking(make_iterator: Callable[[Cancellation], Iterator[T]]) -> AsyncGenerator[T, None]:
    """Drive a blocking iterator in a thread and yield its items asynchronously.

    Closing the async iterator or cancelling the consuming task cancels the
    native generation (it stops within a token) and waits for the thread.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancellation = Cancellation()

    def produce() -> None:
        try:
            for item in make_iterator(cancellation):
                loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
                if cancellation.cancelled:
                    break
        except BaseException as error:  # delivered to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, ("error", error))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

    worker = asyncio.ensure_future(asyncio.to_thread(produce))
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                break
    finally:
        cancellation.cancel()
        await asyncio.gather(worker, return_exceptions=True)
