"""RPC overhead: generation speed with layers on loopback RPC workers against local-only.

On the default model (or --model), in one run, it starts --workers
``llamacpp-rpc-server`` processes on free loopback ports (CPU device,
--threads each) and measures decode tokens/s of one greedy stream of
--max-tokens tokens (end of generation suppressed, the prompt left out), and
prompt tokens/s of a --prompt-tokens prompt, for:

* local only (the reference row), and local without repacked CPU weights (the
  kernels a worker's CPU device runs);
* every layer on 1 worker, then on 2 workers (split evenly);
* half the layers on 2 workers, the rest on this machine's CPU.

Besides tokens/s it reports the CPU time a generated token costs, client and
workers added up (Linux: /proc): the figure that shows RPC's overhead even on a
busy shared machine, where a worker process can draw CPU time the client would
have had to share, and so make wall-clock rows look faster.  All of it runs on
one machine: loopback shows the overhead of RPC, never a speed-up.  RPC pays off
when the workers are other machines (or GPUs) that add memory or compute.  Each
row prints the median of --repeats runs and its ratio to local only; compare
ratios, and repeat.

    python benchmarks/rpc_bench.py --max-tokens 64 --repeats 3 --plot rpc.png
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PROMPT = "Once upon a time, in a small village by the sea,"


def free_port() -> int:
    """A loopback port nothing listens on (just now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def workers(count: int, threads: int) -> Iterator[tuple[list[str], list[int]]]:
    """``count`` loopback workers, as (``host:port`` addresses, process ids); stopped on exit."""
    from llamacpp_native import RpcServerError
    from llamacpp_native.binding import rpc

    processes: list[subprocess.Popen[bytes]] = []
    addresses: list[str] = []
    try:
        for _ in range(count):
            port = free_port()
            command = [sys.executable, "-m", "llamacpp_native.cli.rpc_server", "--port", str(port)]
            processes.append(
                subprocess.Popen([*command, "--threads", str(threads)], stdout=subprocess.DEVNULL)
            )
            address = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    rpc.handshake(address, timeout=2)
                    break
                except RpcServerError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            addresses.append(address)
        yield addresses, [process.pid for process in processes]
    finally:
        for process in processes:
            process.terminate()
            process.wait()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of this process and of ``pids`` so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def generation_run(llama: Any, max_tokens: int, pids: list[int]) -> tuple[float, float]:
    """(decode tokens/s, CPU ms per token) of one greedy stream, first to last token."""
    stamps: list[float] = []
    cpu: list[float] = []
    stream = llama.create_completion(
        PROMPT,
        max_tokens=max_tokens,
        temperature=0.0,
        logit_bias={llama.token_eos(): float("-inf")},
        stream=True,
    )
    for chunk in stream:
        if chunk["choices"][0]["text"]:
            stamps.append(time.perf_counter())
            if len(stamps) == 1:
                cpu.append(cpu_seconds(pids))
    cpu.append(cpu_seconds(pids))
    tokens = len(stamps) - 1
    return tokens / (stamps[-1] - stamps[0]), 1000 * (cpu[1] - cpu[0]) / tokens


def prompt_tokens_per_s(llama: Any, n_tokens: int, offset: int) -> float:
    """Prompt tokens/s of ``n_tokens`` tokens never seen before (so nothing is cached)."""
    n_vocab = llama.model.vocab.n_tokens
    tokens = [llama.token_bos()] + [
        1000 + (offset * 7919 + i * 104729) % (n_vocab - 2000) for i in range(n_tokens)
    ]
    start = time.perf_counter()
    llama.create_completion(tokens, max_tokens=1, temperature=0.0)
    return n_tokens / (time.perf_counter() - start)


def median_of(repeats: int, run: Callable[[int], float]) -> float:
    return statistics.median(run(i) for i in range(repeats))


def medians_of(repeats: int, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    results = [run() for _ in range(repeats)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="GGUF file (default: the project's default model)"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per generation run (default 64)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="tokens per prompt run (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads of the client and of each worker (default 1)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="also write a bar chart of the ratios")
    args = parser.parse_args(argv)

    from llamacpp_native import Llama, Model

    if args.model is None:
        from llamacpp_integrations.models import default_model_path

        args.model = default_model_path()
    common = {"n_ctx": 1024, "n_parallel": 1, "n_threads": args.threads, "seed": 1234}
    rows: list[tuple[str, float, float, float, str]] = []
    with workers(2, args.threads) as (servers, pids):
        configurations: list[tuple[str, dict[str, Any]]] = [
            ("local only", {}),
            ("local, no repacked weights", {"use_extra_bufts": False}),
            ("all layers on 1 worker", {"n_gpu_layers": -1, "rpc_servers": servers[:1]}),
            ("all layers on 2 workers", {"n_gpu_layers": -1, "rpc_servers": servers}),
            ("half on 2 workers, half local", {"n_gpu_layers": "half", "rpc_servers": servers}),
        ]
        for name, settings in configurations:
            print(f"measuring: {name}", file=sys.stderr, flush=True)
            if settings.get("n_gpu_layers") == "half":
                with Model(args.model) as probe:  # weights memory-mapped, not read
                    settings = {**settings, "n_gpu_layers": (probe.n_layer + 1) // 2}
            with Llama(args.model, **common, **settings) as llama:
                llama.create_completion(PROMPT, max_tokens=4)  # warm up: weights paged in, prompt cached
                generation, cpu_ms = medians_of(
                    args.repeats, lambda: generation_run(llama, args.max_tokens, pids)
                )
                prompt = median_of(args.repeats, lambda i: prompt_tokens_per_s(llama, args.prompt_tokens, i))
                layers = ", ".join(
                    f"{device} {count}" for device, count in llama.offload_report().layers.items()
                )
            rows.append((name, generation, cpu_ms, prompt, layers))

    print(
        f"model: {args.model.name}  threads: {args.threads} (client and each worker)  "
        f"repeats: {args.repeats}  generation: {args.max_tokens} tokens  "
        f"prompt: {args.prompt_tokens} tokens  (loopback: overhead only)"
    )
    print(
        f"{'configuration':<31} {'gen tok/s':>9} {'ratio':>6} {'CPU ms/tok':>10} {'ratio':>6} "
        f"{'prompt tok/s':>12} {'ratio':>6}  layers"
    )
    reference = rows[0]
    for name, generation, cpu_ms, prompt, layers in rows:
        print(
            f"{name:<31} {generation:>9.1f} {generation / reference[1]:>6.2f} "
            f"{cpu_ms:>10.1f} {cpu_ms / reference[2]:>6.2f} "
            f"{prompt:>12.1f} {prompt / reference[3]:>6.2f}  {layers}"
        )
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = [row[0] for row in rows]
        positions = list(range(len(rows)))
        ax.barh([y - 0.2 for y in positions], [row[1] / reference[1] for row in rows], 0.4, label="gen tok/s")
        ax.barh(
            [y + 0.2 for y in positions], [row[2] / reference[2] for row in rows], 0.4, label="CPU ms/token"
        )
        ax.set_yticks(positions, names)
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.invert_yaxis()
        ax.legend()
        ax.set_xlabel("ratio to local only")
        ax.set_title(f"RPC on loopback, {args.model.name}: overhead only", fontsize=10)
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
