"""The model registry: names -> models, loaded on first use, at most ``models_max`` resident (LRU).

A request holds a ``Lease`` on its model while it runs, so a model in use is
never unloaded under it, nor closed at shutdown before the request lets go.
Generation leases also count against the model's queue bound: ``n_parallel``
running plus ``max_queue`` waiting, beyond which a request is refused with 503
and ``Retry-After``.

With ``sleep_idle_seconds`` a model that no lease has held for that long is
unloaded (llama-server's sleeping) and loaded again by the next request that
acquires it; requests arriving meanwhile wait for that one load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llamacpp_integrations.server.errors import model_not_found, server_overloaded, shutting_down
from llamacpp_integrations.server.metrics import ModelGauges
from llamacpp_integrations.server.settings import ModelSettings
from llamacpp_native import Llama
from llamacpp_native.errors import LlamaError, ModelNotFoundError

logger = logging.getLogger(__name__)

ENGINE_COUNTERS = (
    "prompt_tokens_decoded",
    "decode_calls",
    "decoded_sequences",
    "draft_tokens",
    "draft_tokens_accepted",
    "draft_steps",
)
"""``Engine.stats()`` counters that ``/metrics`` reports since the server started, across reloads."""

LEASE_GRACE_S = 30.0
"""Seconds ``ModelRegistry.close`` waits for requests to give their models back before closing them anyway."""


class ModelEntry:
    """One configured model: its settings and, while resident, its ``Llama``."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.llama: Llama | None = None
        self.load_error: BaseException | None = None
        self.users = 0  # leases held
        self.in_flight = 0  # generation leases held (running or waiting for a slot)
        self.last_used = 0.0
        self.load_lock = asyncio.Lock()
        self.sleeping = False
        """Whether the model was unloaded for being idle (``sleep_idle_seconds``); the next lease wakes it."""
        self.description: dict[str, Any] | None = None
        """The registry's ``describe(lease)`` of this model, taken once, for answering while it sleeps."""
        self._end_tokens: list[int] | None = None
        self._counted: Counter[str] = Counter()  # ENGINE_COUNTERS of the Llamas closed before
        self._longest = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Future[None] | None = None  # the close of its last Llama, until done

    @property
    def alias(self) -> str:
        """The model's public name."""
        return self.settings.alias

    async def end_tokens(self) -> list[int]:
        """The loaded model's end-of-generation tokens (for ``ignore_eos``), found once per load."""
        if self._end_tokens is None:
            assert self.llama is not None, "only a leased (loaded) model has tokens"
            vocab = self.llama.model.vocab
            self._end_tokens = await asyncio.to_thread(
                lambda: [token for token in range(vocab.n_tokens) if vocab.is_eog(token)]
            )
        return self._end_tokens

    def unload(self) -> Llama | None:
        """Forget the loaded ``Llama`` (returned, for the caller to close), keeping its engine's counters."""
        llama, self.llama, self._end_tokens = self.llama, None, None
        if llama is not None:
            stats = _engine_stats(llama)
            self._counted.update({name: stats.get(name, 0) for name in ENGINE_COUNTERS})
            self._longest = max(self._longest, stats.get("longest_sequence", 0))
        return llama

    def gauges(self) -> ModelGauges:
        """Current load and the engine's counters since the server started, for /metrics."""
        llama = self.llama
        stats = llama.engine.stats() if llama is not None else {}
        total = {name: self._counted[name] + stats.get(name, 0) for name in ENGINE_COUNTERS}
        counters = ModelGauges(
            self.alias,
            loaded=False,
            slots=self.settings.n_parallel,
            busy_slots=0,
            queued=0,
            in_flight=self.in_flight,
            prompt_tokens_decoded=total["prompt_tokens_decoded"],
            decode_calls=total["decode_calls"],
            decoded_sequences=total["decoded_sequences"],
            longest_sequence=max(self._longest, stats.get("longest_sequence", 0)),
            draft_tokens=total["draft_tokens"],
            draft_tokens_accepted=total["draft_tokens_accepted"],
            draft_steps=total["draft_steps"],
        )
        if llama is None:
            return counters
        engine = llama.engine
        slots = engine.slot_stats()
        return dataclasses.replace(
            counters,
            loaded=True,
            slots=stats["slots"],
            busy_slots=stats["busy_slots"],
            queued=stats["queued"],
            n_ctx=engine.n_cells,
            kv_cache_tokens=sum(int(slot["n_cached"]) for slot in slots if slot["is_processing"]),
            lora_adapters=tuple(sorted(llama.lora_adapters)),
        )


class Lease:
    """A model held by one request; ``release()`` (idempotent) when the request is done."""

    def __init__(self, registry: ModelRegistry, entry: ModelEntry, llama: Llama, generation: bool) -> None:
        self._registry = registry
        self.entry = entry
        self.llama = llama
        self.generation = generation
        self._released = False

    @property
    def alias(self) -> str:
        """The name responses report as ``model``."""
        return self.entry.alias

    def release(self) -> None:
        """Give the model back (it may then be unloaded to make room)."""
        if not self._released:
            self._released = True
            self._registry._release(self)


class ModelRegistry:
    """The served models by name: lazy loading, LRU unloading, per-model queue bounds."""

    def __init__(
        self,
        models: Sequence[ModelSettings],
        *,
        models_max: int,
        max_queue: int,
        verbose: bool = False,
        strict_names: bool = False,
        sleep_idle_seconds: float | None = None,
        describe: Callable[[Lease], dict[str, Any]] | None = None,
        on_sleep: Callable[[bool], None] | None = None,
    ) -> None:
        """``sleep_idle_seconds``: unload a model no lease has held for that long (None: never);
        ``describe(lease)``: what ``/props`` says of a model, kept to answer while it sleeps;
        ``on_sleep(True)``: the server is about to sleep (its last loaded model still is),
        ``on_sleep(False)``: it woke (a model is loaded again)."""
        if not models:
            raise ValueError("no model to serve")
        for settings in models:
            if not Path(settings.model).is_file():
                raise ModelNotFoundError(f"model file not found: {settings.model}")
        self.entries = [ModelEntry(settings) for settings in models]
        self.models_max = models_max
        self.max_queue = max_queue
        self.verbose = verbose
        self.strict_names = strict_names
        """404 for a name not served even when one model is; else that model answers to any name."""
        self.sleep_idle_seconds = sleep_idle_seconds
        self.describe = describe
        self.on_sleep = on_sleep
        self._unknown_names: set[str] = set()
        self.closing = False
        self._names: dict[str, ModelEntry] = {}
        for entry in reversed(self.entries):  # the first model wins a name two models share
            self._names.update(dict.fromkeys(entry.settings.names(), entry))
        self._closes: set[asyncio.Future[None]] = set()
        self._leases_returned = asyncio.Event()
        """Set once closing and no lease is held."""

    @property
    def asleep(self) -> bool:
        """Whether the server sleeps: no model is loaded, and one was unloaded for being idle."""
        return any(e.sleeping for e in self.entries) and all(e.llama is None for e in self.entries)

    @property
    def default(self) -> ModelEntry:
        """The model used when a request names none."""
        return self.entries[0]

    def resolve(self, name: str | None, *, any_name: bool = True) -> ModelEntry:
        """The entry for ``name`` (the default for None or "", or any name when one model is served).

        Raises a 404 ``APIError`` for an unknown name when several models are
        served, with ``strict_names``, or without ``any_name``.
        """
        if not name:
            return self.default
        entry = self._names.get(name)
        if entry is not None:
            return entry
        if self.strict_names or not any_name or len(self.entries) > 1:
            raise model_not_found(name)
        if name not in self._unknown_names:  # clients hard-code names such as gpt-4o-mini: say so once
            self._unknown_names.add(name)
            logger.info(
                "model %r is not served; answering with %r (--strict_model_name refuses)",
                name,
                self.default.alias,
            )
        return self.default

    async def acquire(self, name: str | None, *, generation: bool = False) -> Lease:
        """Hold the model called ``name``, loading it first if needed.

        Raises 404 for an unknown name, 503 while shutting down, and 503 with
        ``Retry-After`` when a generation would exceed the model's queue bound.
        """
        entry = self.resolve(name)
        if self.closing:
            raise shutting_down()
        if generation and entry.in_flight >= entry.settings.n_parallel + self.max_queue:
            raise server_overloaded()
        entry.users += 1
        entry.in_flight += generation
        if entry._idle_timer is not None:
            entry._idle_timer.cancel()
            entry._idle_timer = None
        try:
            llama = await self._loaded(entry)
        except BaseException:
            entry.users -= 1
            entry.in_flight -= generation
            self._note_returned()
            self._start_idle_timer(entry)
            raise
        entry.last_used = time.monotonic()
        lease = Lease(self, entry, llama, generation)
        if self.describe is not None and entry.description is None:
            try:
                entry.description = await asyncio.to_thread(self.describe, lease)
            except BaseException:
                lease.release()
                raise
        return lease

    async def _loaded(self, entry: ModelEntry) -> Llama:
        async with entry.load_lock:
            if entry.llama is None:
                self._unload_idle(keep=entry, room_for_one=True)
                if entry._closing is not None:  # its last Llama is still being freed: not twice in memory
                    await asyncio.gather(entry._closing, return_exceptions=True)
                settings = entry.settings
                logger.info("loading model %s from %s", entry.alias, settings.model)
                try:
                    llama = await asyncio.to_thread(
                        Llama, settings.model, **settings.llama_kwargs(self.verbose)
                    )
                except Exception as error:
                    entry.load_error = error
                    raise
                entry.load_error = None
                if self.closing:
                    await asyncio.to_thread(llama.close)
                    raise shutting_down()
                woke = self.asleep
                entry.llama = llama
                entry.sleeping = False
                if woke and self.on_sleep is not None:
                    self.on_sleep(False)
            return entry.llama

    def _release(self, lease: Lease) -> None:
        entry = lease.entry
        entry.users -= 1
        entry.in_flight -= lease.generation
        entry.last_used = time.monotonic()
        self._note_returned()
        self._unload_idle()
        self._start_idle_timer(entry)

    def _start_idle_timer(self, entry: ModelEntry) -> None:
        """Put ``entry`` to sleep after ``sleep_idle_seconds`` unless a lease holds it before then."""
        if self.sleep_idle_seconds is None or entry.users or entry.llama is None or self.closing:
            return
        entry._idle_timer = asyncio.get_running_loop().call_later(self.sleep_idle_seconds, self._sleep, entry)

    def _sleep(self, entry: ModelEntry) -> None:
        """Unload ``entry`` (idle for ``sleep_idle_seconds``); its next lease loads it again."""
        entry._idle_timer = None
        if entry.users or entry.llama is None or self.closing:
            return
        logger.info("model %s idle for %g s: sleeping (unloading it)", entry.alias, self.sleep_idle_seconds)
        if self.on_sleep is not None and all(e.llama is None for e in self.entries if e is not entry):
            self.on_sleep(True)
        entry.sleeping = True
        self._close_in_background(entry)

    def _note_returned(self) -> None:
        """Wake ``close()`` once the last lease is given back."""
        if self.closing and not any(entry.users for entry in self.entries):
            self._leases_returned.set()

    def _unload_idle(self, keep: ModelEntry | None = None, room_for_one: bool = False) -> None:
        """Unload least recently used idle models while more than ``models_max`` are resident."""
        limit = self.models_max - room_for_one
        resident = [e for e in self.entries if e.llama is not None]
        idle = sorted((e for e in resident if e.users == 0 and e is not keep), key=lambda e: e.last_used)
        for entry in idle[: max(0, len(resident) - limit)]:
            logger.info("unloading model %s (least recently used)", entry.alias)
            self._close_in_background(entry)

    def _close_in_background(self, entry: ModelEntry) -> None:
        llama = entry.unload()
        if llama is not None:
            future = asyncio.ensure_future(asyncio.to_thread(llama.close))
            self._closes.add(future)
            future.add_done_callback(self._closes.discard)
            entry._closing = future
            future.add_done_callback(lambda done: _forget_close(entry, done))

    async def close(self, grace: float = LEASE_GRACE_S) -> None:
        """Stop admitting, end running generations, and close each model once no request holds it.

        New requests get 503 at once.  Running generations end with ``ClosedError``
        (a stream's last event says the server is shutting down); other requests
        finish.  A model is closed when its last lease is released, or after
        ``grace`` seconds for a lease never released (the native layer then fails
        that request's further calls with ``ClosedError``; it never frees memory
        under a call in flight).
        """
        self.closing = True
        for entry in self.entries:
            if entry._idle_timer is not None:
                entry._idle_timer.cancel()
        held = [entry for entry in self.entries if entry.users]
        for entry in self.entries:
            if not entry.users:
                self._close_in_background(entry)
        stops = [asyncio.to_thread(_stop_generating, e.llama) for e in held if e.llama is not None]
        await asyncio.gather(*stops, return_exceptions=True)
        self._note_returned()
        if held:
            try:
                await asyncio.wait_for(self._leases_returned.wait(), grace)
            except asyncio.TimeoutError:
                busy = ", ".join(f"{e.alias} ({e.users})" for e in self.entries if e.users)
                logger.warning("closing models still leased after %.0f s: %s", grace, busy)
        for entry in self.entries:
            self._close_in_background(entry)
        if self._closes:
            await asyncio.gather(*self._closes, return_exceptions=True)

    def gauges(self) -> list[ModelGauges]:
        """Every model's current load, for /metrics."""
        return [entry.gauges() for entry in self.entries]


def _forget_close(entry: ModelEntry, done: asyncio.Future[None]) -> None:
    """Clear ``entry``'s pending close once ``done`` (the close of its last ``Llama``) has finished."""
    if entry._closing is done:
        entry._closing = None


def _engine_stats(llama: Llama) -> dict[str, int]:
    """``llama``'s ``Engine.stats()``, or nothing for a Llama without a usable engine."""
    try:
        return llama.engine.stats()
    except (ValueError, LlamaError):  # vocab-only, closed, or an RPC worker stopped
        return {}


def _stop_generating(llama: Llama) -> None:
    """End ``llama``'s queued and running generations with ``ClosedError``; the model stays loaded."""
    try:
        engine = llama.engine
    except (ValueError, LlamaError):  # vocab-only, closed, or an RPC worker stopped: nothing to stop
        return
    engine.close()
