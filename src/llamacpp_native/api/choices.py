"""Several choices in one response: OpenAI's ``n``, and a batch of completion prompts.

Each choice is its own engine request and stream; the n choices of one prompt are submitted
together (``Engine.submit_choices``): the first decodes the prompt, the others copy its KV.
Here their chunk dicts are interleaved as they come, each under its choice's ``index``, and
the usage is summed: every prompt counted once, every choice's completion tokens.  A single
choice never comes here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

from llamacpp_native.api import openai_shapes
from llamacpp_native.binding.sampling import DEFAULT_SEED
from llamacpp_native.engine.core import Engine
from llamacpp_native.engine.request_stream import RequestStream
from llamacpp_native.engine.types import Chunk, GenerationRequest

Shape = Callable[[Chunk], list[dict[str, Any]]]
"""A choice's renderer: one engine chunk in, its chunk dicts out."""


def check_n(n: Any) -> int:
    """``n`` as a count of choices (``ValueError`` unless an int >= 1)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a number of choices >= 1, got {n!r}")
    return n


def choice_requests(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """``n`` copies of ``request``; with a seed given, choice ``i`` samples with ``seed + i``, so the
    choices differ from each other and the same seed gives the same choices again."""
    seed = request.sampling.seed
    if seed == DEFAULT_SEED:  # a random seed per sampler already
        return [dataclasses.replace(request) for _ in range(n)]
    seeds = [(seed + i) % DEFAULT_SEED for i in range(n)]  # never DEFAULT_SEED, which means random
    return [
        dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, seed=s)) for s in seeds
    ]


def is_prompt_batch(prompt: Any) -> bool:
    """Whether a completion ``prompt`` is several prompts: a list of texts or of token-id lists."""
    return (
        isinstance(prompt, list | tuple)
        and bool(prompt)
        and all(isinstance(p, str | list | tuple) for p in prompt)
    )


class Choices:
    """The choices of one response, in index order: each prompt's ``n`` requests, and per choice
    its renderer and the chunks it opens with (a chat's role, an echoed prompt)."""

    def __init__(
        self,
        collect_one: Callable[[list[dict[str, Any]]], dict[str, Any]],
        groups: list[list[GenerationRequest]],
    ) -> None:
        self.collect_one = collect_one
        """Collects one choice's chunk dicts into a response (see ``collect``)."""
        self.groups = groups
        self.shapes: list[Shape] = []
        self.openers: list[list[dict[str, Any]]] = []
        self.streams: list[RequestStream] = []

    def add(self, shape: Shape, opener: list[dict[str, Any]]) -> None:
        """The next choice's renderer and opening chunks."""
        self.shapes.append(shape)
        self.openers.append(opener)

    def submit(self, engine: Engine) -> None:
        """Queue every group of choices; if one cannot run, none runs."""
        self.streams.extend(engine.submit_groups(self.groups))

    def run(
        self,
    ) -> tuple[list[RequestStream], list[Shape], list[list[dict[str, Any]]], UsageTotal]:
        """The arguments of ``interleave`` and ``ainterleave``."""
        index = [g for g, group in enumerate(self.groups) for _ in group]
        return self.streams, self.shapes, self.openers, UsageTotal(index)


class UsageTotal:
    """The usage of several choices: each prompt once (its first choice's count), all completions.

    ``take`` removes each choice's own usage from its finishing chunk and puts the total on the
    finishing chunk of the last choice to end, so the stream's last chunk carries it, as with one.
    """

    def __init__(self, groups: Sequence[int]) -> None:
        self._group = list(groups)  # the prompt of each choice
        self._open = len(groups)
        self._prompt: dict[int, tuple[int, int]] = {}  # prompt -> (tokens, cached)
        self._completion = 0

    def take(self, index: int, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for item in items:
            own = item.pop("usage", None)
            if own is None:
                continue
            cached = (own.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            self._prompt.setdefault(self._group[index], (own["prompt_tokens"], cached))
            self._completion += own["completion_tokens"]
            self._open -= 1
            if self._open == 0:
                item["usage"] = self.usage()
        return items

    def usage(self) -> dict[str, Any]:
        prompt = sum(tokens for tokens, _ in self._prompt.values())
        cached = sum(cached for _, cached in self._prompt.values())
        return openai_shapes.usage(prompt, self._completion, cached)


def interleave(
    streams: Sequence[RequestStream],
    shapes: Sequence[Shape],
    openers: Sequence[list[dict[str, Any]]],
    total: UsageTotal,
) -> Iterator[dict[str, Any]]:
    """The choices' chunk dicts as they come (a thread waits on all streams at once); closing this
    iterator cancels every choice."""
    wakeup = threading.Event()
    for stream in streams:
        stream.wakeup = wakeup
    try:
        for items in openers:
            yield from items
        waiting = list(range(len(streams)))
        while waiting:
            wakeup.clear()
            for i in list(waiting):
                while (chunk := streams[i].poll()) is not None:
                    yield from total.take(i, shapes[i](chunk))
                if streams[i].finished:
                    waiting.remove(i)
            if waiting:
                wakeup.wait()
    finally:
        for stream in streams:
            stream.cancel()


async def ainterleave(
    streams: Sequence[RequestStream],
    shapes: Sequence[Shape],
    openers: Sequence[list[dict[str, Any]]],
    total: UsageTotal,
) -> AsyncIterator[dict[str, Any]]:
    """``interleave`` for asyncio: one event, set by any stream's output, wakes the task."""
    event = asyncio.Event()
    for stream in streams:
        stream.share_event(event)
    try:
        for items in openers:
            for item in items:
                yield item
        waiting = list(range(len(streams)))
        while waiting:
            event.clear()
            for i in list(waiting):
                while (chunk := streams[i].poll()) is not None:
                    for item in total.take(i, shapes[i](chunk)):
                        yield item
                if streams[i].finished:
                    waiting.remove(i)
            if waiting:
                await event.wait()
    finally:
        for stream in streams:
            stream.cancel()


def collect(
    chunks: Iterable[dict[str, Any]], collect_one: Callable[[list[dict[str, Any]]], dict[str, Any]]
) -> dict[str, Any]:
    """One response from interleaved chunks: each choice collected on its own (``collect_one``),
    the choices in index order, the summed usage."""
    by_index: dict[int, list[dict[str, Any]]] = {}
    usage: dict[str, Any] | None = None
    for chunk in chunks:
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            by_index.setdefault(choice["index"], []).append({**chunk, "choices": [choice]})
    results = {i: collect_one(by_index[i]) for i in sorted(by_index)}
    response = next(iter(results.values()))
    response["choices"] = [{**result["choices"][0], "index": i} for i, result in results.items()]
    response["usage"] = usage if usage is not None else response.get("usage")
    return response
