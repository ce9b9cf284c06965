"""Counters and gauges for ``GET /metrics`` in Prometheus' text format (no client library needed).

Besides our own ``llamacpp_*`` names, each model's load is exported under the names
that the Gateway API Inference Extension's endpoint picker reads by default (vLLM's:
``vllm:num_requests_waiting``, ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``,
``vllm:lora_requests_info``), and the server's totals under llama-server's unlabelled
``llamacpp:*`` names, with llama-server's meanings: its two throughput gauges average over
the time between two scrapes, and while the server sleeps a scrape reads what it measured
just before (see ``Metrics.fall_asleep``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RATE_WINDOW_S = 60.0
"""Generation throughput (``llamacpp_tokens_per_second``) is averaged over this many seconds."""

MONITORING_ENDPOINTS = frozenset({"/health", "/metrics", "/props", "/slots", "/models", "/v1/models"})
"""Endpoints that only read the server's state: answering them leaves the models as they were."""


@dataclass(frozen=True)
class ModelGauges:
    """One model's current load, as the registry and its engine see it, and its engine's counters."""

    model: str
    loaded: bool
    slots: int
    busy_slots: int
    queued: int
    in_flight: int
    n_ctx: int = 0
    kv_cache_tokens: int = 0
    """KV-cache cells held by running requests (an idle slot's cached prefix can be evicted: not counted)."""
    lora_adapters: tuple[str, ...] = ()
    draft_tokens: int = 0
    """Since the server started (every load of the model): speculative guesses verified and kept,
    prompt tokens decoded, token batches decoded, the sequences those carried, and the most tokens
    one sequence held."""
    draft_tokens_accepted: int = 0
    prompt_tokens_decoded: int = 0
    decode_calls: int = 0
    decoded_sequences: int = 0
    longest_sequence: int = 0
    draft_steps: int = 0
    """Speculative drafts verified (each of one or more guesses)."""

    @property
    def draft_acceptance(self) -> float:
        """The fraction of speculative guesses kept (0 before any)."""
        return self.draft_tokens_accepted / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def waiting(self) -> int:
        """Requests admitted but not running in a slot (in the engine's queue, or not queued yet)."""
        return max(self.in_flight - self.busy_slots, self.queued, 0)

    @property
    def kv_cache_usage(self) -> float:
        """The fraction (0..1) of the KV cache that running requests hold."""
        return min(self.kv_cache_tokens / self.n_ctx, 1.0) if self.n_ctx > 0 else 0.0


@dataclass(frozen=True)
class Rate:
    """Tokens (or decode steps) and the seconds they took: a throughput."""

    count: float = 0.0
    seconds: float = 0.0

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.count + other.count, self.seconds + other.seconds)

    @property
    def per_second(self) -> float:
        """``count`` per second (0 before any time was measured)."""
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Scrape:
    """Everything one ``/metrics`` answer says, measured at one moment."""

    at: float
    """When it was measured (Unix time)."""
    requests: Mapping[tuple[str, int], int]
    prompt_tokens: int
    completion_tokens: int
    cancelled: int
    tokens_per_second: float
    cached_tokens: int
    prompt: Rate
    """Prompt tokens decoded and generation steps (the first token of each request costs none), with
    their seconds: since the server started, and since the last scrape (the gauges' window)."""
    predicted: Rate
    prompt_window: Rate
    predicted_window: Rate
    models: Sequence[ModelGauges]


class Metrics:
    """What the server has done since it started: requests, tokens, cancellations, throughput."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self.cached_tokens = 0
        self.prompt = self.predicted = Rate()
        self._prompt_window = self._predicted_window = Rate()
        self._recent: deque[tuple[float, int]] = deque()  # (when finished, completion tokens)
        self._last: Scrape | None = None  # the last scrape while awake, until a request uses a model
        self._asleep: Scrape | None = None  # what scrapes read while the server sleeps
        self._reported_asleep = False  # a scrape while asleep reported the window: the live one restarts

    def record_request(self, endpoint: str, status: int) -> None:
        """Count one answered HTTP request."""
        self.requests[(endpoint, status)] += 1
        if endpoint not in MONITORING_ENDPOINTS:
            self._last = None

    def record_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Count the tokens of one finished generation or embedding."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if completion_tokens:
            self._recent.append((time.monotonic(), completion_tokens))

    def record_timings(self, timings: Iterable[Mapping[str, Any]]) -> None:
        """Add the prompt and generation times of finished generations (llama-server's ``timings``)."""
        for timing in timings:
            self.cached_tokens += timing["cache_n"]
            prompt = Rate(timing["prompt_n"], timing["prompt_ms"] / 1000.0)
            predicted = Rate(max(timing["predicted_n"] - 1, 0), timing["predicted_ms"] / 1000.0)
            self.prompt += prompt
            self.predicted += predicted
            self._prompt_window += prompt
            self._predicted_window += predicted

    def record_cancelled(self) -> None:
        """Count a generation stopped because its client went away."""
        self.cancelled += 1

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last ``RATE_WINDOW_S`` seconds."""
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        span = min(RATE_WINDOW_S, now - self.started)
        return sum(n for _, n in self._recent) / span if span > 0 else 0.0

    def measure(self, models: Iterable[ModelGauges]) -> Scrape:
        """What a scrape now would say (the throughput window is left as it is)."""
        return Scrape(
            at=float(int(time.time())),
            requests=dict(self.requests),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cancelled=self.cancelled,
            tokens_per_second=self.tokens_per_second(),
            cached_tokens=self.cached_tokens,
            prompt=self.prompt,
            predicted=self.predicted,
            prompt_window=self._prompt_window,
            predicted_window=self._predicted_window,
            models=list(models),
        )

    def scrape(self, models: Iterable[ModelGauges], asleep: bool = False) -> str:
        """The text of ``GET /metrics``; the throughput window starts again after it, as llama-server's.

        While ``asleep`` the answer is what ``fall_asleep`` kept, its window emptied once reported.
        """
        if asleep and self._asleep is not None:
            kept = self._asleep
            self._asleep = dataclasses.replace(kept, prompt_window=Rate(), predicted_window=Rate())
            self._reported_asleep = True
            return render(kept)
        self._last = self.measure(models)
        self._prompt_window = self._predicted_window = Rate()
        return render(self._last)

    def fall_asleep(self, models: Iterable[ModelGauges]) -> None:
        """Keep what scrapes read while the server sleeps: the last scrape if only monitoring requests
        came since (so it reads the same), else what a scrape would say now."""
        self._asleep = self._last if self._last is not None else self.measure(models)
        self._reported_asleep = False

    def wake(self) -> None:
        """The server woke: scrapes measure again; a window reported while asleep is not reported twice."""
        self._asleep = None
        if self._reported_asleep:
            self._prompt_window = self._predicted_window = Rate()
        self._reported_asleep = False


def render(scrape: Scrape) -> str:
    """``scrape`` in Prometheus' text format: one ``# HELP`` and ``# TYPE`` block per metric name."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples)

    gauge, counter = "gauge", "counter"
    metric(
        "llamacpp_requests_total",
        counter,
        "HTTP requests answered, by endpoint and status.",
        [({"endpoint": e, "status": str(s)}, n) for (e, s), n in sorted(scrape.requests.items())],
    )
    for name, kind, help_text, value in (
        ("llamacpp_prompt_tokens_total", counter, "Prompt tokens processed.", scrape.prompt_tokens),
        ("llamacpp_completion_tokens_total", counter, "Tokens generated.", scrape.completion_tokens),
        (
            "llamacpp_requests_cancelled_total",
            counter,
            "Generations stopped because the client went away.",
            scrape.cancelled,
        ),
        (
            "llamacpp_tokens_per_second",
            gauge,
            f"Tokens generated per second over the last {RATE_WINDOW_S:.0f} s.",
            scrape.tokens_per_second,
        ),
    ):
        metric(name, kind, help_text, [({}, float(value))])
    models = scrape.models
    for name, label, kind, help_text, attribute in (
        ("llamacpp_model_loaded", "model", gauge, "Whether the model is loaded (1) or not (0).", "loaded"),
        ("llamacpp_slots", "model", gauge, "Sequences the model decodes together.", "slots"),
        ("llamacpp_busy_slots", "model", gauge, "Slots generating now.", "busy_slots"),
        ("llamacpp_queue_length", "model", gauge, "Requests waiting in the engine for a slot.", "queued"),
        (
            "llamacpp_requests_in_flight",
            "model",
            gauge,
            "Generation requests admitted and not yet answered.",
            "in_flight",
        ),
        ("llamacpp_requests_waiting", "model", gauge, "Requests waiting for a slot.", "waiting"),
        (
            "llamacpp_kv_cache_usage_ratio",
            "model",
            gauge,
            "Fraction of the KV cache held by running requests.",
            "kv_cache_usage",
        ),
        ("vllm:num_requests_running", "model_name", gauge, "Requests running in a slot.", "busy_slots"),
        ("vllm:num_requests_waiting", "model_name", gauge, "Requests waiting for a slot.", "waiting"),
        (
            "vllm:kv_cache_usage_perc",
            "model_name",
            gauge,
            "Fraction (0..1) of the KV cache held by running requests.",
            "kv_cache_usage",
        ),
        (
            "vllm:spec_decode_num_draft_tokens",
            "model_name",
            counter,
            "Speculative guesses verified.",
            "draft_tokens",
        ),
        (
            "vllm:spec_decode_num_accepted_tokens",
            "model_name",
            counter,
            "Speculative guesses kept.",
            "draft_tokens_accepted",
        ),
        (
            "llamacpp:draft_acceptance_ratio",
            "model_name",
            gauge,
            "Fraction (0..1) of speculative guesses kept.",
            "draft_acceptance",
        ),
    ):
        samples = [({label: g.model}, float(getattr(g, attribute))) for g in models]
        metric(name, kind, help_text, samples)
    for name, kind, help_text, value in _llama_server_series(scrape):
        metric(f"llamacpp:{name}", kind, help_text, [({}, value)])
    lora = [
        (
            {
                "model_name": g.model,
                "max_lora": str(len(g.lora_adapters)),
                "running_lora_adapters": ",".join(g.lora_adapters),
                "waiting_lora_adapters": "",
            },
            scrape.at,
        )
        for g in models
    ]
    metric(
        "vllm:lora_requests_info",
        gauge,
        "LoRA adapters loaded (running) and awaited (waiting); the value is when this was measured.",
        lora,
    )
    return "\n".join(lines) + "\n"


def _llama_server_series(scrape: Scrape) -> list[tuple[str, str, str, float]]:
    """llama-server's unlabelled series (its names, types and help), summed over the models."""
    models = scrape.models
    decodes = sum(g.decode_calls for g in models)
    counter, gauge = "counter", "gauge"
    return [
        (
            "prompt_tokens_total",
            counter,
            "Number of prompt tokens processed, excluding cached tokens",
            sum(g.prompt_tokens_decoded for g in models),
        ),
        (
            "prompt_tokens_cached_total",
            counter,
            "Number of prompt tokens reused from the cache",
            scrape.cached_tokens,
        ),
        ("prompt_seconds_total", counter, "Total time spent processing prompts", scrape.prompt.seconds),
        (
            "tokens_predicted_total",
            counter,
            "Number of generation tokens processed",
            scrape.completion_tokens,
        ),
        (
            "tokens_predicted_seconds_total",
            counter,
            "Total time spent generating tokens",
            scrape.predicted.seconds,
        ),
        ("n_decode_total", counter, "Total number of llama_decode() calls of token batches", decodes),
        (
            "n_tokens_max",
            counter,
            "Largest observed sequence length (prompt + generation)",
            max((g.longest_sequence for g in models), default=0),
        ),
        (
            "spec_decode_num_draft_tokens_total",
            counter,
            "Speculative: Total draft tokens generated",
            sum(g.draft_tokens for g in models),
        ),
        (
            "spec_decode_num_accepted_tokens_total",
            counter,
            "Speculative: Total draft tokens accepted by the target model",
            sum(g.draft_tokens_accepted for g in models),
        ),
        (
            "spec_decode_num_drafts_total",
            counter,
            "Speculative: Total speculative decoding verification steps",
            sum(g.draft_steps for g in models),
        ),
        (
            "prompt_tokens_seconds",
            gauge,
            "Average prompt throughput in tokens/s",
            scrape.prompt_window.per_second,
        ),
        (
            "predicted_tokens_seconds",
            gauge,
            "Average generation throughput in tokens/s",
            scrape.predicted_window.per_second,
        ),
        ("requests_processing", gauge, "Number of requests processing", sum(g.busy_slots for g in models)),
        ("requests_deferred", gauge, "Number of requests deferred", sum(g.waiting for g in models)),
        (
            "n_busy_slots_per_decode",
            gauge,
            "Average number of busy slots per llama_decode() call",
            sum(g.decoded_sequences for g in models) / max(decodes, 1),
        ),
    ]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
