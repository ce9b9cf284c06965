"""Serving many concurrent streams: ours against llama-server and llama-cpp-python.

For each client count N (``--clients``), N threads start at once (released by one
barrier) and each streams one completion of exactly ``--tokens`` tokens ("Story
<n>:" prompts, temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repeat
penalty, a fixed seed per client, end-of-generation tokens suppressed).  Measured
per target and N:

* aggregate generation rate: all generated tokens / wall time from the first
  client's start to the last stream's end (prompt processing included);
* time to first token (TTFT) of every client, from its request to its first
  streamed token; the table shows p50 and p95 over the clients (pooled over rounds).

Targets, all on the same model, threads, batch sizes and context per slot:

* **ours**: one ``llamacpp_native.Llama(n_parallel=N, n_ctx=N x per-slot)``, called
  from N Python threads (its engine batches the streams: continuous batching);
* **LangChain**: ``llamacpp_integrations.langchain.LlamaCpp.stream`` on the same;
* **llama-server** (the ceiling): ``llama-server -np N -c N x per-slot --cont-batching
  -kvu``, built from the same pinned llama.cpp (``reference.py``), on 127.0.0.1, driven by
  N threads doing streaming ``POST /completion`` (``ignore_eos``) with the standard library;
* **llama-batched-bench** (the ceiling for N sequences in one process): ``-npl N -kvu``,
  8 prompt tokens and ``--tokens`` generated per sequence, its generation rate S_TG
  (prompt processing left out, so it flatters the ceiling slightly; no TTFT);
* **llama-cpp-python** (the peer), on our ``libllama.so``: one ``Llama`` is not
  thread-safe, so its N threads take turns under a lock, as its users must.

Python targets run in fresh processes (``_worker.py``), the server is started
afresh for each N; each target is warmed up with one short stream per client
first.  Rounds (``--rounds``) interleave the targets, rotating their order; the
table shows the median rate over rounds.  Compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _serving  # noqa: E402
import _worker  # noqa: E402
import bench  # noqa: E402
import reference  # noqa: E402
from _serving import LOOPBACK, cpu_model, percentile  # noqa: E402

RESULTS = HERE / "results"
TARGETS = ("ours", "langchain", "server", "batched", "peer")
LABELS = {
    "ours": "ours",
    "langchain": "LangChain",
    "server": "llama-server",
    "batched": "llama-batched-bench",
    "peer": "llama-cpp-python",
}
WORKER_ENGINES = {"ours": "ours", "langchain": "langchain-ours", "peer": "peer"}
PROMPT = "Story {number}:"
WARMUP_PROMPT = "Warm-up {number}:"
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}


# -- llama-server --------------------------------------------------------------------------------------
def server_command(binary: Path, args: argparse.Namespace, clients: int, port: int) -> list[str]:
    """``llama-server`` with the settings every other target gets."""
    options = {
        "-m": args.model, "--host": LOOPBACK, "--port": port, "-np": clients,
        "-c": clients * args.ctx_per_slot, "-t": args.threads, "-tb": args.threads,
        "-b": args.n_batch, "-ub": args.n_ubatch, "-fa": args.flash_attn, "--fit": "off",
        "-cram": 0,  # no host-memory prompt cache: ours has none, and these prompts never recur
    }  # fmt: skip
    flags = ["--cont-batching", "-kvu", "--swa-full", "--no-ui"]
    return [str(binary), *bench._options(options), *flags]


@contextmanager
def running_server(binary: Path, args: argparse.Namespace, clients: int) -> Iterator[tuple[int, float]]:
    """Start llama-server on a free loopback port; yield (port, seconds until healthy)."""
    port = _serving.free_port()
    command = server_command(binary, args, clients, port)
    with _serving.running_process(command, port, "llama-server") as (_process, load_s):
        yield port, load_s


def server_stream(port: int, prompt: str, seed: int, n_predict: int) -> Iterator[dict[str, Any]]:
    """One streaming ``POST /completion``: yields each token event; checks all were generated."""
    body = dict(SAMPLING, prompt=prompt, seed=seed, n_predict=n_predict, ignore_eos=True, stream=True)
    final = None
    events = _serving.sse_events(port, "/completion", body, "llama-server")
    try:
        for event in events:
            if event.get("stop"):
                final = event
                break
            yield event
    finally:
        events.close()
    made = (final or {}).get("tokens_predicted")
    if made != n_predict:
        raise RuntimeError(f"llama-server generated {made} tokens, expected {n_predict}")


def run_server(
    binary: Path, args: argparse.Namespace, clients: int, inputs: dict[str, Any]
) -> dict[str, Any]:
    """Warm-up round, then the measured one, against a fresh ``llama-server -np clients``."""
    prompts, seeds, warmups = inputs["prompts"], inputs["seeds"], inputs["warmup_prompts"]
    with running_server(binary, args, clients) as (port, load_s):
        _worker.drive_clients(
            clients, lambda i: server_stream(port, warmups[i], seeds[i], args.warmup_tokens)
        )
        records = _worker.drive_clients(
            clients, lambda i: server_stream(port, prompts[i], seeds[i], args.tokens)
        )
    return dict(_worker.client_figures(records, args.tokens), load_s=load_s)


# -- llama-batched-bench: the ceiling for N sequences in one process ------------------------------------
def run_batched(binary: Path, args: argparse.Namespace, clients: int) -> dict[str, Any]:
    """``llama-batched-bench -npl clients -kvu``: its generation rate S_TG as the t/s (no TTFT)."""
    options = {
        "-m": args.model, "-c": clients * args.ctx_per_slot, "-t": args.threads, "-tb": args.threads,
        "-b": args.n_batch, "-ub": args.n_ubatch, "-fa": args.flash_attn, "-npp": 8,
        "-ntg": args.tokens, "-npl": clients, "--output-format": "jsonl",
    }  # fmt: skip
    started = time.perf_counter()
    out = bench._check_output([str(binary), *bench._options(options), "-kvu", "--swa-full"], timeout=600)
    for line in out.splitlines():
        if line.strip().startswith("{") and '"speed_tg"' in line:
            data = json.loads(line)
            return {"tps": float(data["speed_tg"]), "ttft_s": [], "wall_s": time.perf_counter() - started}
    raise RuntimeError(f"no result line in llama-batched-bench's output:\n{out[-1500:]}")


# -- the Python targets ----------------------------------------------------------------------------------
def run_python(
    target: str,
    args: argparse.Namespace,
    clients: int,
    inputs: dict[str, Any],
    base_config: dict[str, Any],
    peer_python: Path | None,
) -> dict[str, Any]:
    """ours / LangChain / the peer in a fresh process (``_worker.py``, task ``concurrency``)."""
    config = dict(
        base_config, **inputs, engine=WORKER_ENGINES[target], tasks=["concurrency"], clients=clients
    )
    if target == "peer":
        assert peer_python is not None
        result = bench.run_worker(peer_python, config, reference.peer_env())
    else:
        result = bench.run_worker(Path(sys.executable), config, None)
    return dict(result["concurrency"])


# -- figures ------------------------------------------------------------------------------------------------
def summarise(samples: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[str, dict[int, dict[str, float]]]:
    """Per target and client count: median t/s over rounds (and spread), TTFT p50/p95 in ms."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for target, by_clients in samples.items():
        for clients, rounds in by_clients.items():
            if not rounds:
                continue
            rates = [r["tps"] for r in rounds]
            ttft_ms = [1000 * t for r in rounds for t in r["ttft_s"]] or [float("nan")]
            median = statistics.median(rates)
            out.setdefault(target, {})[clients] = {
                "tps": median,
                "spread": (max(rates) - min(rates)) / 2 / median if median else 0.0,
                "rounds": float(len(rounds)),
                "ttft_p50_ms": percentile(ttft_ms, 50),
                "ttft_p95_ms": percentile(ttft_ms, 95),
            }
    return out


def _get(
    summary: dict[str, dict[int, dict[str, float]]], target: str, clients: int
) -> dict[str, float] | None:
    return summary.get(target, {}).get(clients)


def _rate(summary: dict[str, dict[int, dict[str, float]]], target: str, clients: int) -> str:
    item = _get(summary, target, clients)
    if item is None:
        return "-"
    text = f"{item['tps']:.1f}"
    return text + (f" ±{item['spread'] * 100:.0f}%" if item["rounds"] > 1 else "")


def _ratio(
    summary: dict[str, dict[int, dict[str, float]]], clients: int, top: str, bottom: str, key: str
) -> str:
    a, b = _get(summary, top, clients), _get(summary, bottom, clients)
    if a is None or b is None or not b[key]:
        return "-"
    return f"{a[key] / b[key]:.2f}x"


def _ttft(summary: dict[str, dict[int, dict[str, float]]], target: str, clients: int) -> str:
    item = _get(summary, target, clients)
    return "-" if item is None else f"{item['ttft_p50_ms']:.0f} / {item['ttft_p95_ms']:.0f}"


def render_table(summary: dict[str, dict[int, dict[str, float]]], clients_list: Sequence[int]) -> str:
    """Markdown: t/s per target, ours/server and ours/peer, TTFT p50 / p95 (ms) of ours and the server."""
    header = [
        "clients", "ours t/s", "LangChain t/s", "llama-server t/s", "llama-batched-bench S_TG",
        "llama-cpp-python t/s", "ours/server", "ours/batched-bench", "ours/peer", "TTFT p50/p95 ours (ms)",
        "TTFT p50/p95 server (ms)", "TTFT p95 ours/server",
    ]  # fmt: skip
    body = [
        [
            str(n),
            *(_rate(summary, target, n) for target in ("ours", "langchain", "server", "batched", "peer")),
            _ratio(summary, n, "ours", "server", "tps"),
            _ratio(summary, n, "ours", "batched", "tps"),
            _ratio(summary, n, "ours", "peer", "tps"),
            _ttft(summary, "ours", n),
            _ttft(summary, "server", n),
            _ratio(summary, n, "ours", "server", "ttft_p95_ms"),
        ]
        for n in clients_list
    ]
    return bench._markdown(header, body)


def plot(
    summary: dict[str, dict[int, dict[str, float]]], clients_list: Sequence[int], path: Path, title: str
) -> None:
    """Aggregate t/s against clients (left) and TTFT p50 / p95 against clients (right)."""
    plt = _serving.pyplot()

    colours = {
        "ours": "#1f77b4",
        "langchain": "#2ca02c",
        "server": "#7f7f7f",
        "batched": "#9467bd",
        "peer": "#ff7f0e",
    }
    fig, (rates, ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    for target in TARGETS:
        points = [(n, summary[target][n]) for n in clients_list if n in summary.get(target, {})]
        if not points:
            continue
        xs = [n for n, _ in points]
        rates.errorbar(
            xs,
            [p["tps"] for _, p in points],
            yerr=[p["tps"] * p["spread"] for _, p in points],
            marker="o",
            capsize=3,
            color=colours[target],
            label=LABELS[target],
        )
        ttft.plot(
            xs,
            [p["ttft_p95_ms"] for _, p in points],
            marker="o",
            color=colours[target],
            label=f"{LABELS[target]} p95",
        )
        ttft.plot(
            xs,
            [p["ttft_p50_ms"] for _, p in points],
            linestyle="--",
            color=colours[target],
            label=f"{LABELS[target]} p50",
        )
    for ax, ylabel in ((rates, "generated tokens / s, all clients"), (ttft, "time to first token (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(clients_list), [str(n) for n in clients_list])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    rates.set_ylim(bottom=0)
    ttft.set_yscale("log")
    _serving.save_figure(fig, path, title)


# -- the run ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from llamacpp_integrations.models import default_model_path

    parser = _serving.benchmark_parser(__doc__)
    _serving.add_load_options(parser, clients="1,2,4,8,16", targets=TARGETS)
    parser.add_argument("--n-batch", type=int, default=512, help="logical batch (%(default)s)")
    parser.add_argument("--n-ubatch", type=int, default=512, help="physical batch (%(default)s)")
    parser.add_argument(
        "--flash-attn",
        choices=("on", "off"),
        default="on",
        help="flash attention for every target (default: on, what llama.cpp's auto picks on CPU)",
    )
    parser.add_argument("--no-langchain", action="store_true", help="skip the LangChain target")
    _serving.add_output_options(parser, "concurrency")
    args = parser.parse_args(argv)
    args.model = str(args.model or default_model_path())
    args.targets = _serving.chosen_targets(parser, args.targets, TARGETS)
    if args.no_langchain and "langchain" in args.targets:
        args.targets.remove("langchain")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.tokens < 1 or args.warmup_tokens < 1:
        parser.error("--tokens and --warmup-tokens must be at least 1")
    if args.ctx_per_slot < args.tokens + 32:
        parser.error(
            f"--ctx-per-slot must leave room for the prompt: at least --tokens + 32 = {args.tokens + 32}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    notes: list[str] = []
    say = bench.say

    eog, _ordinary = bench.model_facts(args.model)
    base_config = {
        "model": args.model,
        "threads": args.threads,
        "n_batch": args.n_batch,
        "n_ubatch": args.n_ubatch,
        "flash_attn": args.flash_attn == "on",
        "seed": args.seed,
        "sampling": SAMPLING,
        "eog_tokens": eog,
        "tokens": args.tokens,
        "warmup_tokens": args.warmup_tokens,
        "ctx_per_slot": args.ctx_per_slot,
    }

    # References first, so that a missing one is reported before any timing.
    server_binary: Path | None = None
    batched_binary: Path | None = None
    peer_python: Path | None = None
    for target, name in (("server", "llama-server"), ("batched", "llama-batched-bench")):
        if target in args.targets:
            try:
                binary = reference.native_tools(build=not args.no_build, names=(name,))[name]
            except reference.ReferenceError as error:
                notes.append(f"{name} skipped: {error}")
                continue
            if target == "server":
                server_binary = binary
            else:
                batched_binary = binary
    if "peer" in args.targets:
        try:
            peer_python = reference.peer_python(install=not args.no_build)
        except reference.ReferenceError as error:
            notes.append(f"llama-cpp-python skipped: {error}")
    jobs = [
        t
        for t in args.targets
        if (t != "server" or server_binary is not None)
        and (t != "batched" or batched_binary is not None)
        and (t != "peer" or peer_python is not None)
    ]

    samples: dict[str, dict[int, list[dict[str, Any]]]] = {t: {n: [] for n in args.clients} for t in jobs}
    load_before = os.getloadavg()
    step = 0
    for round_index in range(args.rounds):
        for clients in args.clients:
            # Fresh prompts for every step (no prompt-cache hits), the same for every target.
            first = 100 * step
            inputs = {
                "prompts": [PROMPT.format(number=first + i + 1) for i in range(clients)],
                "warmup_prompts": [WARMUP_PROMPT.format(number=first + i + 1) for i in range(clients)],
                "seeds": [args.seed + 1000 * round_index + i for i in range(clients)],
            }
            order = jobs[step % len(jobs) :] + jobs[: step % len(jobs)] if jobs else []
            step += 1
            for target in order:
                say(f"round {round_index + 1}/{args.rounds}, {clients} clients: {LABELS[target]} ...")
                try:
                    if target == "server":
                        assert server_binary is not None
                        figures = run_server(server_binary, args, clients, inputs)
                    elif target == "batched":
                        assert batched_binary is not None
                        figures = run_batched(batched_binary, args, clients)
                    else:
                        figures = run_python(target, args, clients, inputs, base_config, peer_python)
                except (RuntimeError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
                    notes.append(f"round {round_index + 1}, {clients} clients, {LABELS[target]}: {error}")
                    say(f"  failed: {error}")
                    continue
                samples[target][clients].append(figures)
                ttft = sorted(figures["ttft_s"]) or [float("nan")]
                say(
                    f"  {figures['tps']:.1f} t/s, TTFT {1000 * ttft[0]:.0f}-{1000 * ttft[-1]:.0f} ms, "
                    f"{figures['wall_s']:.2f} s"
                )
    load_after = os.getloadavg()

    summary = summarise(samples)
    heading = (
        f"{Path(args.model).name}, {args.tokens} tokens per client, {args.threads} threads, "
        f"context {args.ctx_per_slot} per slot, n_batch {args.n_batch}/{args.n_ubatch}, "
        f"flash-attn {args.flash_attn}, {args.rounds} round(s)"
    )
    print(f"\n{time.strftime('%Y-%m-%d %H:%M %Z')}: {heading}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {args.threads} threads; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; {time.time() - started:.0f} s in all"
    )
    print()
    print(render_table(summary, args.clients))
    for note in notes:
        print(f"\nnote: {note}")

    if args.json is not None:
        path = Path(args.json) if args.json else RESULTS / f"concurrency-{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "settings": vars(args),
                    "heading": heading,
                    "cpu": cpu_model(),
                    "samples": samples,
                    "summary": summary,
                    "notes": notes,
                    "load": [load_before, load_after],
                },
                indent=2,
                default=str,
            )
        )
        print(f"\nwrote {path}")
    if args.plot is not None:
        path = Path(args.plot) if args.plot else RESULTS / f"concurrency-{stamp}.png"
        plot(summary, args.clients, path, heading)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
