"""LoRA cost: generation speed under an adapter, and the cost of switching adapters between requests.

On the default model (or --model), with random adapters written for it at the
start (rank --rank on every attention and feed-forward projection of every layer,
as PEFT's usual "all linear layers" target; or your own with --adapter), it
measures, in one process:

* generation: one greedy stream of --max-tokens tokens (end of generation
  suppressed), decode tokens/s from first to last token, with no adapter and
  with one adapter at scale 1;
* switching, one request at a time: --requests short requests all under adapter
  A, against the same requests alternating A and B (each one changes the
  context's adapter set; every prompt stays in the prefix cache of its set);
* switching, concurrent: --parallel requests submitted at once, all under A
  (one shared batch), against half under A and half under B (the engine never
  batches different sets together, so the halves run one after the other).

Each row prints the median of --repeats runs and its ratio to the reference row
measured in the same run.  Timings on a shared machine are noisy: compare
ratios, and repeat.  Writing the random adapters needs the ``gguf`` package
(the test extra); --adapter paths need nothing more.

    python benchmarks/lora_bench.py --max-tokens 64 --repeats 3 --plot lora.png
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROMPT = "Once upon a time, in a small village by the sea,"
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def write_random_adapters(folder: Path, llama: Any, rank: int, count: int = 2) -> list[Path]:
    """Random LoRA adapters of ``rank`` on every projection in ``TARGETS`` of every layer."""
    import gguf
    import numpy as np

    targets = [
        (tensor.name, *(int(n) for n in tensor.shape))  # ggml order: n_in, n_out
        for tensor in gguf.GGUFReader(llama.model_path).tensors
        if tensor.name.startswith("blk.") and tensor.name.split(".")[2] in TARGETS
    ]
    paths = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        path = folder / f"random-{seed}.gguf"
        writer = gguf.GGUFWriter(path, llama.model.architecture)
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(rank))
        for name, n_in, n_out in targets:  # numpy shapes are ggml's reversed
            writer.add_tensor(f"{name}.lora_a", rng.normal(0, 0.01, (rank, n_in)).astype(np.float32))
            writer.add_tensor(f"{name}.lora_b", rng.normal(0, 0.01, (n_out, rank)).astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        paths.append(path)
    return paths


def generation_tokens_per_s(llama: Any, lora: dict[Any, float], max_tokens: int) -> float:
    """Decode tokens/s of one greedy stream, first to last token (the prompt is left out)."""
    stamps: list[float] = []
    stream = llama.create_completion(
        PROMPT,
        max_tokens=max_tokens,
        temperature=0.0,
        logit_bias={llama.token_eos(): float("-inf")},
        lora=lora,
        stream=True,
    )
    for chunk in stream:
        if chunk["choices"][0]["text"]:
            stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def sequential_seconds(llama: Any, sets: list[dict[Any, float]], requests: int, max_tokens: int) -> float:
    """Wall time of ``requests`` short requests, one after another, cycling through ``sets``."""
    start = time.perf_counter()
    for i in range(requests):
        llama.create_completion(PROMPT, max_tokens=max_tokens, temperature=0.0, lora=sets[i % len(sets)])
    return time.perf_counter() - start


def concurrent_seconds(llama: Any, sets: list[dict[Any, float]], parallel: int, max_tokens: int) -> float:
    """Wall time of ``parallel`` requests submitted at once, the first half under sets[0]."""
    no_end = {llama.token_eos(): float("-inf")}
    requests = [
        llama.completion_request(
            f"Story {i}: {PROMPT}",
            max_tokens=max_tokens,
            temperature=0.0,
            logit_bias=no_end,
            lora=sets[0] if i < parallel // 2 else sets[-1],
        )
        for i in range(parallel)
    ]
    start = time.perf_counter()
    llama.engine.generate_many(requests)
    return time.perf_counter() - start


def median_of(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="GGUF file (default: the project's default model)"
    )
    parser.add_argument(
        "--adapter",
        type=Path,
        action="append",
        default=None,
        help="a LoRA adapter for the model; give two (A and B; default: random ones written for it)",
    )
    parser.add_argument("--rank", type=int, default=16, help="rank of the random adapters (default 16)")
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="tokens of the generation runs (default 64)"
    )
    parser.add_argument(
        "--requests", type=int, default=8, help="sequential requests per switching run (default 8)"
    )
    parser.add_argument(
        "--parallel", type=int, default=4, help="requests submitted at once (default 4; also the slots)"
    )
    parser.add_argument(
        "--short-tokens", type=int, default=8, help="tokens per switching request (default 8)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="decode threads (default: all cores)")
    parser.add_argument("--plot", type=Path, default=None, help="also write a bar chart of the ratios")
    args = parser.parse_args(argv)

    from llamacpp_native import Llama

    if args.model is None:
        from llamacpp_integrations.models import default_model_path

        args.model = default_model_path()
    with (
        Llama(args.model, n_ctx=4096, n_parallel=args.parallel, n_threads=args.threads, seed=1234) as llama,
        tempfile.TemporaryDirectory() as folder,
    ):
        adapters = args.adapter or write_random_adapters(Path(folder), llama, args.rank)
        if len(adapters) != 2:
            parser.error("give --adapter twice (A and B), or not at all")
        a, b = (llama.load_lora(path, name=name) for path, name in zip(adapters, "AB", strict=True))
        none: dict[Any, float] = {}
        only_a: dict[Any, float] = {a: 1.0}
        only_b: dict[Any, float] = {b: 1.0}
        for lora in (none, only_a, only_b):  # warm up: weights paged in, prompts cached
            llama.create_completion(PROMPT, max_tokens=4, lora=lora)

        def generation(lora: dict[Any, float]) -> float:
            return median_of(args.repeats, lambda: generation_tokens_per_s(llama, lora, args.max_tokens))

        def sequential(sets: list[dict[Any, float]]) -> float:
            seconds = median_of(
                args.repeats, lambda: sequential_seconds(llama, sets, args.requests, args.short_tokens)
            )
            return args.requests / seconds

        def concurrent(sets: list[dict[Any, float]]) -> float:
            seconds = median_of(
                args.repeats, lambda: concurrent_seconds(llama, sets, args.parallel, args.max_tokens)
            )
            return args.parallel * args.max_tokens / seconds

        rows = [
            ("generation, no adapter", "tok/s", generation(none)),
            ("generation, adapter A x1", "tok/s", generation(only_a)),
            ("sequential, all A", "req/s", sequential([only_a])),
            ("sequential, A/B alternating", "req/s", sequential([only_a, only_b])),
            ("concurrent, all A", "tok/s", concurrent([only_a])),
            ("concurrent, half A half B", "tok/s", concurrent([only_a, only_b])),
        ]
        threads = llama.engine.context.n_threads

    print(
        f"model: {args.model.name}  adapters: {', '.join(p.name for p in adapters)}"
        f"{f' (random, rank {args.rank})' if not args.adapter else ''}  threads: {threads}  "
        f"repeats: {args.repeats}"
    )
    print(
        f"generation: {args.max_tokens} tokens;  sequential: {args.requests} requests of "
        f"{args.short_tokens} tokens;  concurrent: {args.parallel} requests of {args.max_tokens} tokens"
    )
    print(f"{'run':<30} {'value':>8} {'unit':<6} {'ratio':>6}  reference")
    ratios: list[tuple[str, float]] = []
    for i, (name, unit, value) in enumerate(rows):
        reference = rows[i - i % 2]
        ratio = value / reference[2]
        ratios.append((name, ratio))
        print(f"{name:<30} {value:>8.1f} {unit:<6} {ratio:>6.2f}  {reference[0]}")
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        ax.barh([name for name, _ in ratios], [ratio for _, ratio in ratios])
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("ratio to the reference row")
        ax.set_title(f"LoRA cost ({args.model.name}, {threads} threads)")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
