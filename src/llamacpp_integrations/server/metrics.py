"""Counters and gauges for ``GET /metrics`` in Prometheus' text format (no client library needed).

Besides our own ``llamacpp_*`` names, each model's load is exported under the names
that the Gateway API Inference Extension's endpoint picker reads by default (vLLM's:
``vllm:num_requests_waiting``, ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``,
``vllm:lora_requests_info``) and llama-server's (``llamacpp:requests_processing``,
``llamacpp:requests_deferred``).  llama-server's server-wide counters that we measure too
(``llamacpp:tokens_predicted_total``, ...) carry no labels, as llama-server's do.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

RATE_WINDOW_S = 60.0
"""Generation throughput is averaged over this many seconds."""


@dataclass(frozen=True)
class ModelGauges:
    """One model's current load, as the registry and its engine see it."""

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
    """Speculative guesses verified since the model loaded, and how many were kept."""
    draft_tokens_accepted: int = 0

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


class Metrics:
    """What the server has done since it started: requests, tokens, cancellations, throughput."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self._recent: deque[tuple[float, int]] = deque()  # (when finished, completion tokens)

    def record_request(self, endpoint: str, status: int) -> None:
        """Count one answered HTTP request."""
        self.requests[(endpoint, status)] += 1

    def record_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Count the tokens of one finished generation or embedding."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if completion_tokens:
            self._recent.append((time.monotonic(), completion_tokens))

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

    def render(self, models: Iterable[ModelGauges]) -> str:
        """The Prometheus text exposition of everything above, plus each model's gauges."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples)

        metric(
            "llamacpp_requests_total",
            "counter",
            "HTTP requests answered, by endpoint and status.",
            [({"endpoint": e, "status": str(s)}, n) for (e, s), n in sorted(self.requests.items())],
        )
        metric(
            "llamacpp_prompt_tokens_total", "counter", "Prompt tokens processed.", [({}, self.prompt_tokens)]
        )
        metric(
            "llamacpp_completion_tokens_total", "counter", "Tokens generated.", [({}, self.completion_tokens)]
        )
        metric(
            "llamacpp_requests_cancelled_total",
            "counter",
            "Generations stopped because the client went away.",
            [({}, self.cancelled)],
        )
        metric(
            "llamacpp_tokens_per_second",
            "gauge",
            f"Tokens generated per second over the last {RATE_WINDOW_S:.0f} s.",
            [({}, self.tokens_per_second())],
        )
        gauges = list(models)
        for name, help_text, attribute in (
            ("llamacpp_model_loaded", "Whether the model is loaded (1) or not (0).", "loaded"),
            ("llamacpp_slots", "Sequences the model decodes together.", "slots"),
            ("llamacpp_busy_slots", "Slots generating now.", "busy_slots"),
            ("llamacpp_queue_length", "Requests waiting in the engine for a slot.", "queued"),
            (
                "llamacpp_requests_in_flight",
                "Generation requests admitted and not yet answered.",
                "in_flight",
            ),
        ):
            samples = [({"model": g.model}, float(getattr(g, attribute))) for g in gauges]
            metric(name, "gauge", help_text, samples)
        gauge, counter = "gauge", "counter"
        for name, label, kind, help_text, attribute in (
            ("llamacpp_requests_waiting", "model", gauge, "Requests waiting for a slot.", "waiting"),
            (
                "llamacpp_kv_cache_usage_ratio",
                "model",
                gauge,
                "Fraction of the KV cache held by running requests.",
                "kv_cache_usage",
            ),
            ("llamacpp:requests_processing", "model", gauge, "Requests running in a slot.", "busy_slots"),
            ("llamacpp:requests_deferred", "model", gauge, "Requests waiting for a slot.", "waiting"),
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
            samples = [({label: g.model}, float(getattr(g, attribute))) for g in gauges]
            metric(name, kind, help_text, samples)
        for name, help_text, total in (
            ("llamacpp:tokens_predicted_total", "Tokens generated, by every model.", self.completion_tokens),
            (
                "llamacpp:spec_decode_num_draft_tokens_total",
                "Speculative guesses verified, by every loaded model since it loaded.",
                sum(g.draft_tokens for g in gauges),
            ),
            (
                "llamacpp:spec_decode_num_accepted_tokens_total",
                "Speculative guesses kept, by every loaded model since it loaded.",
                sum(g.draft_tokens_accepted for g in gauges),
            ),
        ):
            metric(name, counter, help_text, [({}, float(total))])
        now = float(int(time.time()))
        lora = [
            (
                {
                    "model_name": g.model,
                    "max_lora": str(len(g.lora_adapters)),
                    "running_lora_adapters": ",".join(g.lora_adapters),
                    "waiting_lora_adapters": "",
                },
                now,
            )
            for g in gauges
        ]
        metric(
            "vllm:lora_requests_info",
            "gauge",
            "LoRA adapters loaded (running) and awaited (waiting); the value is when this was measured.",
            lora,
        )
        return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
