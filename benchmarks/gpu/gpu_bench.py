"""Ours against llama.cpp's own tools on a GPU, every layer offloaded, one Markdown table.

Run by ``run_kit.sh`` on the device machine; it reuses the measuring code of the CPU
benchmarks (``bench.py``, ``_worker.py``, ``concurrency.py``, ``server_bench.py``) and
only adds ``-ngl`` / ``n_gpu_layers`` to every target:

* prompt pp512: ``create_completion(512 random tokens, max_tokens=1)`` against
  ``llama-bench -p 512`` (target ≥ 0.95);
* decode, one stream: 128 sampled tokens, streamed (bench.py's "tg"), against
  ``llama-bench -n 128`` (target ≥ 0.97);
* N parallel, total: ``create_completions`` of N prompts of 128 tokens, 128 tokens
  each, against ``llama-batched-bench -kvu`` S (target at 32: ≥ 0.85), and their
  generation rates against S_TG;
* N streams: N threads, one streamed completion each (concurrency.py's load),
  against ``llama-batched-bench -kvu`` S_TG (target at 32: ≥ 0.85);
* server, N clients: our server over HTTP (server_bench.py's load) against
  ``llama-server -np N -kvu`` (target at 32: ≥ 0.8).

The tools are those ``run_kit.sh`` built against the package's own shared libraries,
so both sides run the same CUDA kernels.  Rounds interleave the targets; the table
shows medians.  ``--deadline`` (a Unix time) stops starting new work in time for the
table to be written.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _serving  # noqa: E402
import bench  # noqa: E402
import concurrency  # noqa: E402
import server_bench  # noqa: E402

NGL = "999"
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}
# (key, label, ours figure, llama.cpp figure, target or None); {n} is a stream count
ROWS: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("pp", "prompt pp{pp} (t/s)", "ours pp", "llama-bench pp", 0.95),
    ("tg", "decode tg{tg}, 1 stream (t/s; ours sampled)", "ours tg", "llama-bench tg", 0.97),
)
PER_N: tuple[tuple[str, str, str, str, dict[int, float]], ...] = (
    ("par", "{n} parallel, total S (t/s)", "ours parallel {n}", "batched S {n}", {32: 0.85}),
    ("par_gen", "{n} parallel, generation S_TG (t/s)", "ours parallel_gen {n}", "batched S_TG {n}", {}),
    ("streams", "{n} streams, threads (t/s)", "ours streams {n}", "batched S_TG {n}", {32: 0.85}),
    ("server", "server, {n} clients (t/s)", "ours server {n}", "llama-server {n}", {32: 0.8}),
)


def say(text: str) -> None:
    bench.say(f"[gpu_bench {time.strftime('%H:%M:%S')}] {text}")


# -- the tools, with every layer on the GPU ----------------------------------------------------------
def offloading_shim(tool: Path, folder: Path) -> Path:
    """A script that runs ``tool`` with ``-ngl 999`` appended, for bench.py's command builders.

    llama-bench's log (stderr) goes to a file beside the shim: bench.py reads its JSON
    from stdout and stderr together, and a ']' in a CUDA log line would end it early.
    """
    shim = folder / tool.name
    quiet = f' 2>>"{folder / tool.name}.stderr"' if tool.name == "llama-bench" else ""
    shim.write_text(f'#!/bin/sh\nexec "{tool}" "$@" -ngl {NGL}{quiet}\n')
    shim.chmod(0o755)
    return shim


def tool_args(args: argparse.Namespace, **extra: Any) -> argparse.Namespace:
    """The settings bench.py's ``run_llama_bench`` / ``run_batched_bench`` read."""
    return argparse.Namespace(
        model=args.model, threads=args.threads, n_batch=args.n_batch, n_ubatch=args.n_batch, pp=args.pp,
        tg=args.tg, flash_attn="on", parallel_prompt=args.parallel_prompt, parallel_tg=args.parallel_tg,
        **extra,
    )  # fmt: skip


# -- ours, in fresh processes (_gpu_worker.py: _worker.py with n_gpu_layers) ------------------------
def run_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One ``_gpu_worker.py`` run with ``config``; its JSON result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
        path = handle.name
    try:
        result = subprocess.run(
            [sys.executable, str(HERE / "_gpu_worker.py"), path], capture_output=True, text=True, timeout=600
        )
    finally:
        os.unlink(path)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"worker failed (exit {result.returncode}):\n{tail}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# -- servers ------------------------------------------------------------------------------------------
def launcher(args: argparse.Namespace, server: Path | None) -> server_bench.Launcher:
    """server_bench.py's commands for ours and llama-server, with every layer on the GPU."""
    settings = argparse.Namespace(
        model=args.model, ctx_per_slot=args.ctx_per_slot, threads=args.threads, n_batch=args.n_batch
    )

    def launch(target: str, clients: int, port: int) -> tuple[list[str], dict[str, str]]:
        if target == "ours":
            command = server_bench.ours_command(settings, clients, port)
            return [*command, "--n_gpu_layers", "-1", "--flash_attn", "true"], server_bench.ours_env()
        assert server is not None
        command = server_bench.llama_server_command(server, settings, clients, port)
        return [*command, "-ngl", NGL], dict(os.environ)

    return launch


# -- one round --------------------------------------------------------------------------------------------
Job = tuple[str, Callable[[], dict[str, float]]]


def round_jobs(
    args: argparse.Namespace, tools: dict[str, Path], base: dict[str, Any], ordinary: list[int], step: int
) -> list[Job]:
    """Every measurement of one round, each a (name, call returning figures)."""
    rng = random.Random(args.seed + step)
    jobs: list[Job] = []
    if "llama-bench" in tools:
        jobs.append(("llama-bench", lambda: bench.run_llama_bench(tools["llama-bench"], tool_args(args))))
    base = dict(base, pp_tokens=bench.random_prompts(ordinary, 1, args.pp, rng)[0])  # also the warm-up
    single = dict(base, tasks=["pp", "tg"])
    jobs.append(("ours pp/tg", lambda: bench.flatten("ours", run_worker(single))))
    for n in args.streams:
        if "llama-batched-bench" in tools:

            def batched(n: int = n) -> dict[str, float]:
                figures = bench.run_batched_bench(tools["llama-batched-bench"], tool_args(args, parallel=n))
                return {
                    f"batched S {n}": figures["batched-bench S"],
                    f"batched S_TG {n}": figures["batched-bench S_TG"],
                }

            jobs.append((f"llama-batched-bench -npl {n}", batched))
        prompts = bench.random_prompts(ordinary, n, args.parallel_prompt, rng)
        parallel = dict(base, tasks=["parallel"], parallel_prompts=prompts)

        def ours_parallel(n: int = n, config: dict[str, Any] = parallel) -> dict[str, float]:
            data = run_worker(config)["parallel"]
            return {f"ours parallel {n}": data["tps"], f"ours parallel_gen {n}": data["gen_tps"]}

        jobs.append((f"ours {n} parallel", ours_parallel))
        first = 1000 * step
        streams = dict(
            base, engine="ours", tasks=["concurrency"], clients=n, tokens=args.tokens,
            warmup_tokens=8, ctx_per_slot=args.ctx_per_slot,
            prompts=[concurrency.PROMPT.format(number=first + i + 1) for i in range(n)],
            warmup_prompts=[concurrency.WARMUP_PROMPT.format(number=first + i + 1) for i in range(n)],
            seeds=[args.seed + 1000 * step + i for i in range(n)],
            sampling=concurrency.SAMPLING,
        )  # fmt: skip

        def ours_streams(n: int = n, config: dict[str, Any] = streams) -> dict[str, float]:
            return {f"ours streams {n}": run_worker(config)["concurrency"]["tps"]}

        jobs.append((f"ours {n} streams", ours_streams))
        inputs = {
            "prompts": streams["prompts"], "warmup_prompts": streams["warmup_prompts"],
            "seeds": streams["seeds"], "eog_bias": {},
        }  # fmt: skip
        load = argparse.Namespace(tokens=args.tokens, warmup_tokens=8)
        launch = launcher(args, tools.get("llama-server"))
        for target, key in (("ours", "ours server"), ("server", "llama-server")):
            if target == "server" and "llama-server" not in tools:
                continue

            def serve(
                n: int = n,
                target: str = target,
                key: str = key,
                load: argparse.Namespace = load,
                inputs: dict[str, Any] = inputs,
                launch: server_bench.Launcher = launch,
            ) -> dict[str, float]:
                figures = server_bench.run_target(target, load, n, inputs, launch)
                if not figures["exact"]:
                    raise RuntimeError(f"{key}: token counts {figures['counts']}, finish {figures['finish']}")
                return {f"{key} {n}": figures["tps"]}

            jobs.append((f"{key} {n} clients", serve))
    return jobs


# -- the table --------------------------------------------------------------------------------------------
def table(summary: dict[str, float], args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table and its rows (ours, llama.cpp, ratio, target, met)."""
    rows: list[dict[str, Any]] = []
    for _key, label, ours, ref, target in ROWS:
        rows.append(_row(label.format(pp=args.pp, tg=args.tg), summary, ours, ref, target))
    for _key, label, ours, ref, targets in PER_N:
        for n in args.streams:
            rows.append(_row(label.format(n=n), summary, ours.format(n=n), ref.format(n=n), targets.get(n)))
    header = ["measure", "ours", "llama.cpp", "ours / llama.cpp", "target", "met"]
    body = [
        [
            r["label"],
            _num(r["ours"]),
            _num(r["reference"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            "-" if r["target"] is None else f"≥ {r['target']:.2f}x",
            r["met"],
        ]
        for r in rows
    ]
    return bench._markdown(header, body), rows


def _row(label: str, summary: dict[str, float], ours: str, ref: str, target: float | None) -> dict[str, Any]:
    a, b = summary.get(ours), summary.get(ref)
    ratio = a / b if a is not None and b else None
    met = "-" if target is None or ratio is None else ("yes" if ratio >= target else "**no**")
    return {"label": label, "ours": a, "reference": b, "ratio": ratio, "target": target, "met": met}


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def gpu_name() -> str:
    """The GPU's name and driver, from nvidia-smi (or '?')."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        ).stdout  # fmt: skip
        return out.strip().splitlines()[0] if out.strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# -- the run ------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="GGUF model (make_model.py's)")
    parser.add_argument(
        "--tools", type=Path, required=True, help="folder with llama-bench, ... (run_kit.sh's)"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="where table.md and results.json go"
    )
    parser.add_argument("--threads", type=int, default=8, help="CPU threads for every target (%(default)s)")
    parser.add_argument("--n-batch", type=int, default=512, help="logical = physical batch (%(default)s)")
    parser.add_argument("--pp", type=int, default=512, help="prompt tokens (%(default)s)")
    parser.add_argument("--tg", type=int, default=128, help="single-stream generated tokens (%(default)s)")
    parser.add_argument("--streams", type=_serving.client_counts, default=[8, 32], help="N,N (8,32)")
    parser.add_argument("--parallel-prompt", type=int, default=128, help="prompt of each parallel sequence")
    parser.add_argument("--parallel-tg", type=int, default=128, help="tokens of each parallel sequence")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per stream / client (%(default)s)")
    parser.add_argument("--ctx-per-slot", type=int, default=512, help="context per stream (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="at most this many rounds (%(default)s)")
    parser.add_argument("--deadline", type=float, default=None, help="Unix time: start no round after it")
    parser.add_argument("--seed", type=int, default=1234, help="base seed (%(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    deadline = args.deadline or float("inf")
    notes: list[str] = []
    tools: dict[str, Path] = {}
    shims = Path(tempfile.mkdtemp(prefix="gpu-bench-shims-"))
    for name in ("llama-bench", "llama-batched-bench", "llama-server"):
        path = args.tools / name
        if path.is_file():
            tools[name] = path if name == "llama-server" else offloading_shim(path, shims)
        else:
            notes.append(f"{name} missing in {args.tools}: its rows are empty")

    eog, ordinary = bench.model_facts(args.model)
    base = {
        "model": args.model, "threads": args.threads, "n_ctx": args.pp + args.tg + 64,
        "n_batch": args.n_batch, "n_ubatch": args.n_batch, "flash_attn": True, "seed": args.seed,
        "tg": args.tg, "tg_prompt": bench.TG_PROMPT, "parallel_tg": args.parallel_tg, "sampling": SAMPLING,
        "eog_tokens": eog, "n_gpu_layers": -1, "engine": "ours",
    }  # fmt: skip
    samples: dict[str, list[float]] = {}
    round_seconds = 0.0
    for step in range(args.rounds):
        if step and time.time() + 1.2 * round_seconds > deadline:
            notes.append(f"stopped after {step} round(s): the next would pass the deadline")
            break
        round_started = time.time()
        jobs = round_jobs(args, tools, base, ordinary, step)
        jobs = jobs[step % len(jobs) :] + jobs[: step % len(jobs)]  # rotate the order each round
        for name, call in jobs:
            if time.time() > deadline:
                notes.append(f"round {step + 1}: {name} and later skipped (deadline)")
                break
            say(f"round {step + 1}: {name} ...")
            try:
                figures = call()
            except (
                RuntimeError,
                OSError,
                subprocess.TimeoutExpired,
                json.JSONDecodeError,
                KeyError,
            ) as error:
                notes.append(f"round {step + 1}, {name}: {error}")
                say(f"  failed: {error}")
                continue
            for key, value in figures.items():
                samples.setdefault(key, []).append(float(value))
            say("  " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(figures.items()) if "outside" not in k))
        round_seconds = time.time() - round_started

    summary = {key: statistics.median(values) for key, values in samples.items()}
    markdown, rows = table(summary, args)
    size_mib = Path(args.model).stat().st_size / 2**20
    heading = (
        f"GPU kit, {time.strftime('%Y-%m-%d %H:%M %Z')}: {gpu_name()}; model {Path(args.model).name} "
        f"({size_mib:.0f} MiB, F16, random weights), all layers offloaded, flash attention on, "
        f"{args.threads} CPU threads, n_batch {args.n_batch}; median of up to {args.rounds} rounds "
        f"({len(samples.get('ours tg', []))} for decode); {time.time() - started:.0f} s"
    )
    text = "\n".join([heading, "", markdown, *(f"\nnote: {note}" for note in notes)]) + "\n"
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    (args.out / "results.json").write_text(
        json.dumps(
            {"settings": vars(args), "heading": heading, "samples": samples, "rows": rows, "notes": notes},
            indent=2,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
