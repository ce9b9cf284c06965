"""Grammar overhead: decode speed unconstrained vs JSON-schema-constrained vs the bundled json grammar.

Same model, same prompt, greedy, a fixed number of tokens (end-of-sequence suppressed
with a -inf logit bias, and a schema long enough not to complete first).  Prints one
row per mode with decode tokens/s (first to last token, so prompt processing is left
out), CPU ms per token (less sensitive to other processes than wall time) and the
ratio to the unconstrained run measured in the same process.  Timings on a shared
machine are noisy: compare ratios, and repeat.

    python benchmarks/grammar_overhead.py --repeats 3 --plot grammar_overhead.png
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT = "Describe a person in JSON format:"
# Long enough that the grammar cannot complete within --max-tokens (a completed grammar
# ends the generation whatever the logit bias says): eight people, about 12 tokens each.
SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"}},
                "required": ["name", "age"],
            },
            "minItems": 8,
            "maxItems": 8,
        }
    },
    "required": ["people"],
}


@dataclass
class Sample:
    tokens: int
    decode_s: float
    first_token_s: float
    cpu_s: float


@dataclass
class Row:
    mode: str
    samples: list[Sample]

    @property
    def tokens(self) -> int:
        return min(s.tokens for s in self.samples)

    @property
    def tokens_per_s(self) -> float:
        return statistics.median((s.tokens - 1) / s.decode_s for s in self.samples if s.decode_s > 0)

    @property
    def cpu_ms_per_token(self) -> float:
        return statistics.median(1000 * s.cpu_s / s.tokens for s in self.samples)

    @property
    def first_token_ms(self) -> float:
        return statistics.median(1000 * s.first_token_s for s in self.samples)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(llama: Any, grammar: Any, max_tokens: int) -> Sample:
    """One greedy streamed generation; times from the request to each token."""
    eos = llama.model.vocab.eos
    stamps: list[float] = []
    cpu0, start = _cpu_seconds(), time.perf_counter()
    stream = llama.create_completion(
        PROMPT,
        max_tokens=max_tokens,
        temperature=0.0,
        logit_bias={eos: float("-inf")},
        grammar=grammar,
        stream=True,
    )
    tokens = 0
    for chunk in stream:
        usage = chunk.get("usage")
        if usage:
            tokens = usage["completion_tokens"]
        if chunk["choices"][0]["text"]:
            stamps.append(time.perf_counter())
    cpu = _cpu_seconds() - cpu0
    decode = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return Sample(tokens, decode, stamps[0] - start if stamps else 0.0, cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="GGUF file (default: the project's default model)"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per run (default 64)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per mode; the median is reported (default 3)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="decode threads (default: the engine's default)"
    )
    parser.add_argument(
        "--plot", type=Path, default=None, help="also write a bar chart of tokens/s (matplotlib)"
    )
    args = parser.parse_args(argv)

    from llamacpp_integrations.schema import schema_to_grammar
    from llamacpp_native import Llama, LlamaGrammar

    if args.model is None:
        from llamacpp_integrations.models import default_model_path

        args.model = default_model_path()
    modes: list[tuple[str, Any]] = [
        ("unconstrained", None),
        ("json-schema", LlamaGrammar.from_string(schema_to_grammar(SCHEMA))),
        ("bundled json", LlamaGrammar.from_file("json")),
    ]
    with Llama(args.model, n_ctx=2048, n_parallel=1, n_threads=args.threads, seed=1234) as llama:
        measure(llama, None, 8)  # warm up: weights paged in, prompt cached
        rows = [
            Row(name, [measure(llama, grammar, args.max_tokens) for _ in range(args.repeats)])
            for name, grammar in modes
        ]
        threads = llama.engine.context.n_threads

    base = rows[0]
    print(
        f"model: {args.model.name}  threads: {threads}  "
        f"max_tokens: {args.max_tokens}  repeats: {args.repeats}"
    )
    print(f"prompt: {PROMPT!r}")
    header = (
        f"{'mode':<14} {'tokens':>6} {'tok/s':>8} {'x unconstr.':>11} {'cpu ms/tok':>10} {'x unconstr.':>11} "
    )
    print(header + f"{'1st tok ms':>10}")
    for row in rows:
        print(
            f"{row.mode:<14} {row.tokens:>6} {row.tokens_per_s:>8.1f} "
            f"{row.tokens_per_s / base.tokens_per_s:>11.2f} "
            f"{row.cpu_ms_per_token:>10.1f} {row.cpu_ms_per_token / base.cpu_ms_per_token:>11.2f} "
            f"{row.first_token_ms:>10.0f}"
            + ("  (grammar completed early)" if row.tokens < args.max_tokens else "")
        )
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar([r.mode for r in rows], [r.tokens_per_s for r in rows])
        ax.set_ylabel("decode tokens/s")
        ax.set_title(f"Grammar overhead ({args.model.name}, {threads} threads)")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
