"""Grammar overhead: decode speed unconstrained vs JSON-schema-constrained vs the bundled json grammar.

Same model, same prompt, a fixed number of tokens (end-of-sequence suppressed with a
-inf logit bias, and a schema long enough not to complete first), greedy and sampled
(temperature 0.7 with the default top-k 40, top-p 0.95, min-p 0.05, fixed seed).
The constrained modes run twice: with this package's indexed grammar search (the
default) and with llama.cpp's own grammar sampler, which checks candidates one by
one ("before"); both admit exactly the same tokens.  Prints one row per mode with
decode tokens/s (first to last token, so prompt processing is left out), CPU ms per
token (less sensitive to other processes than wall time) and the ratio to the
unconstrained run of the same decoding, measured in the same process.  Timings on a
shared machine are noisy: compare ratios, and repeat.

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
    decoding: str
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


def measure(llama: Any, grammar: Any, max_tokens: int, temperature: float = 0.0, seed: int = 1234) -> Sample:
    """One streamed generation; times from the request to each token."""
    eos = llama.model.vocab.eos
    stamps: list[float] = []
    cpu0, start = _cpu_seconds(), time.perf_counter()
    stream = llama.create_completion(
        PROMPT,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
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
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="temperature of the sampled rows (default 0.7)"
    )
    args = parser.parse_args(argv)

    from llamacpp_integrations.schema import schema_to_grammar
    from llamacpp_native import Llama, LlamaGrammar
    from llamacpp_native.binding import sampling

    if args.model is None:
        from llamacpp_integrations.models import default_model_path

        args.model = default_model_path()
    schema_grammar = LlamaGrammar.from_string(schema_to_grammar(SCHEMA))
    # (name, grammar, search): search is sampling.GRAMMAR_SEARCH for the run
    schema_modes: list[tuple[str, Any, str]] = [
        ("unconstrained", None, "indexed"),
        ("json-schema", schema_grammar, "indexed"),
        ("json-schema, llama.cpp search", schema_grammar, "llama.cpp"),
    ]
    # the bundled grammar admits any JSON: sampled, the model may close it within a few tokens
    json_modes: list[tuple[str, Any, str]] = [
        ("bundled json", LlamaGrammar.from_file("json"), "indexed"),
        ("bundled json, llama.cpp search", LlamaGrammar.from_file("json"), "llama.cpp"),
    ]
    decodings = [
        ("greedy", 0.0, schema_modes + json_modes),
        (f"T={args.temperature:g}", args.temperature, schema_modes),
    ]
    rows: list[Row] = []
    with Llama(args.model, n_ctx=2048, n_parallel=1, n_threads=args.threads, seed=1234) as llama:
        measure(llama, None, 8)  # warm up: weights paged in, prompt cached
        measure(llama, schema_grammar, 8)  # and the vocabulary index built
        for decoding, temperature, modes in decodings:
            for name, grammar, search in modes:
                sampling.GRAMMAR_SEARCH = search
                try:
                    samples = [
                        measure(llama, grammar, args.max_tokens, temperature, seed=1234 + i)
                        for i in range(args.repeats)
                    ]
                finally:
                    sampling.GRAMMAR_SEARCH = "indexed"
                rows.append(Row(name, decoding, samples))
        threads = llama.engine.context.n_threads

    print(
        f"model: {args.model.name}  threads: {threads}  "
        f"max_tokens: {args.max_tokens}  repeats: {args.repeats}"
    )
    print(f"prompt: {PROMPT!r}")
    header = (
        f"{'decoding':<8} {'mode':<31} {'tokens':>6} {'tok/s':>8} {'x unconstr.':>11} {'cpu ms/tok':>10} "
        f"{'x unconstr.':>11} "
    )
    print(header + f"{'1st tok ms':>10}")
    for row in rows:
        base = next(r for r in rows if r.decoding == row.decoding and r.mode == "unconstrained")
        print(
            f"{row.decoding:<8} {row.mode:<31} {row.tokens:>6} {row.tokens_per_s:>8.1f} "
            f"{row.tokens_per_s / base.tokens_per_s:>11.2f} "
            f"{row.cpu_ms_per_token:>10.1f} {row.cpu_ms_per_token / base.cpu_ms_per_token:>11.2f} "
            f"{row.first_token_ms:>10.0f}"
            + ("  (grammar completed early)" if row.tokens < args.max_tokens else "")
        )
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.barh([f"{r.decoding}: {r.mode}" for r in rows][::-1], [r.tokens_per_s for r in rows][::-1])
        ax.set_xlabel("decode tokens/s")
        ax.set_title(f"Grammar overhead ({args.model.name}, {threads} threads)")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
