"""Throughput of our binding against llama.cpp's own tools and llama-cpp-python.

One run measures, on the same model, threads, context and batch sizes:

* prompt processing of a 512-token prompt (pp512);
* generation of 128 sampled tokens (temperature 0.8, top-p 0.95, top-k 40,
  min-p 0.05, repeat penalty 1.1, end-of-generation tokens suppressed);
* 8 prompts generated in parallel (128 prompt + 128 generated tokens each);
* optionally the same generation through LangChain's ``LlamaCpp``.

for three engines:

* **llama.cpp**: ``llama-bench`` (pp512, and tg128 as the decode-only ceiling),
  ``llama-completion`` (generation with the same sampler settings, ``--ignore-eos``)
  and ``llama-batched-bench`` (8 parallel sequences), built from the same pinned
  source as our package (see ``reference.py``);
* **llama-cpp-python** 0.3.36, loading *our* ``libllama.so``, so only the binding
  differs; it has no multi-sequence API, so its "8 parallel" runs the prompts one
  after another;
* **ours**: ``llamacpp_native.Llama.create_completion`` / ``create_completions``.

Engines run in fresh processes, interleaved round by round (so a burst of
background load hits every engine alike), each warmed up once; the table shows
the median over rounds and the spread (half the range, in % of the median).
Timings depend on the machine and its load: compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _serving  # noqa: E402
import reference  # noqa: E402

RESULTS = HERE / "results"
ENGINES = ("native", "peer", "ours", "langchain")
TG_PROMPT = "Once upon a time, in a quiet village at the edge of a great forest,"
NATIVE_TOOLS = ("llama-bench", "llama-completion", "llama-batched-bench")  # llama-server: concurrency.py


@dataclass(frozen=True)
class Row:
    """One line of the table: a metric and where each engine's number comes from."""

    key: str
    label: str
    native: str | None  # keys into the collected figures; None: no such engine for this path
    peer: str | None
    ours: str
    native_target: float | None = None
    peer_target: float | None = None


# fmt: off
ROWS = (
    Row("pp", "prompt pp{pp} (t/s)", "llama-bench pp", "peer pp", "ours pp", native_target=0.97),
    Row("tg", "generation tg{tg}, sampled (t/s)", "llama-completion tg", "peer tg", "ours tg",
        native_target=0.97, peer_target=1.15),
    Row("tg_unbiased", "  same, no EOG logit bias (chunks/s)", None, "peer tg_unbiased", "ours tg_unbiased"),
    Row("tg_ceiling", "  same vs llama-bench tg{tg} (decode only)", "llama-bench tg", None, "ours tg"),
    Row("parallel", "{np} parallel, total (t/s)", "batched-bench S", "peer parallel", "ours parallel",
        native_target=0.90),
    Row("parallel_gen", "{np} parallel, generation (t/s)", "batched-bench S_TG", "peer parallel_gen",
        "ours parallel_gen"),
    Row("langchain_tg", "LangChain LlamaCpp tg{tg} (t/s)", None, "langchain-peer tg", "langchain-ours tg",
        peer_target=1.15),
)
# fmt: on


# -- the native tools ---------------------------------------------------------------------------------
def _check_output(command: list[str], timeout: float) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{Path(command[0]).name} failed (exit {result.returncode}):\n{tail}")
    return result.stdout + "\n" + result.stderr


def _options(pairs: dict[str, object]) -> list[str]:
    """``{"-t": 2}`` -> ``["-t", "2"]``."""
    return [str(item) for pair in pairs.items() for item in pair]


def _shared_options(args: argparse.Namespace) -> dict[str, object]:
    """Model, threads and batch sizes, as every tool spells them."""
    return {"-m": args.model, "-t": args.threads, "-b": args.n_batch, "-ub": args.n_ubatch}


def run_llama_bench(tool: Path, args: argparse.Namespace) -> dict[str, float]:
    """pp and tg from llama-bench (one repetition; the round loop repeats)."""
    options = {"-p": args.pp, "-n": args.tg, "-fa": int(args.flash_attn == "on"), "-r": 1, "-o": "json"}
    out = _check_output([str(tool), *_options(_shared_options(args) | options)], timeout=600)
    tests = json.loads(out[out.index("[") : out.rindex("]") + 1])
    figures = {}
    for test in tests:
        key = "llama-bench pp" if test["n_prompt"] and not test["n_gen"] else "llama-bench tg"
        figures[key] = float(test["avg_ts"])
    return figures


_SAMPLING_MS = re.compile(r"sampling time =\s*([\d.]+) ms")
_UNACCOUNTED_MS = re.compile(r"unaccounted time =\s*(-?[\d.]+) ms")
_EVAL_MS = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs")


def run_llama_completion(tool: Path, args: argparse.Namespace, prompt: str, seed: int) -> dict[str, float]:
    """Generation with sampling, from llama-completion's own timing report.

    Per token: eval time per decode plus sampling time per generated token (its
    "sampling time" covers every sample, including the common-library overhead).
    Outside ``llama_decode`` per token: sampling plus its "unaccounted" time (console
    output, bookkeeping), spread over the generated tokens.
    """
    options = {
        "-tb": args.threads, "-c": args.n_ctx, "-fa": args.flash_attn, "-n": args.tg, "--seed": seed,
        "--temp": 0.8, "--top-p": 0.95, "--top-k": 40, "--min-p": 0.05, "--repeat-penalty": 1.1,
        "--repeat-last-n": 64, "-p": prompt,
    }  # fmt: skip
    flags = ["--swa-full", "--ignore-eos", "-no-cnv", "--no-display-prompt"]
    out = _check_output([str(tool), *_options(_shared_options(args) | options), *flags], timeout=600)
    sampling = _SAMPLING_MS.search(out)
    evals = _EVAL_MS.search(out)
    if sampling is None or evals is None:
        raise RuntimeError(f"could not read llama-completion's timings from:\n{out[-1500:]}")
    per_token_ms = float(evals.group(1)) / int(evals.group(2)) + float(sampling.group(1)) / args.tg
    unaccounted = _UNACCOUNTED_MS.search(out)
    outside_ms = (float(sampling.group(1)) + (float(unaccounted.group(1)) if unaccounted else 0.0)) / args.tg
    return {"llama-completion tg": 1000.0 / per_token_ms, "llama-completion tg outside_ms": outside_ms}


def run_batched_bench(tool: Path, args: argparse.Namespace) -> dict[str, float]:
    """Parallel sequences from llama-batched-bench (unified KV cache, like our engine)."""
    options = {
        "-tb": args.threads, "-c": args.parallel * (args.parallel_prompt + args.parallel_tg),
        "-fa": args.flash_attn, "-npp": args.parallel_prompt, "-ntg": args.parallel_tg, "-npl": args.parallel,
        "--output-format": "jsonl",
    }  # fmt: skip
    flags = ["--swa-full", "-kvu"]
    out = _check_output([str(tool), *_options(_shared_options(args) | options), *flags], timeout=600)
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            data = json.loads(line)
            return {"batched-bench S": float(data["speed"]), "batched-bench S_TG": float(data["speed_tg"])}
    raise RuntimeError(f"no result line in llama-batched-bench's output:\n{out[-1500:]}")


# -- the Python engines --------------------------------------------------------------------------------
def run_worker(python: Path, config: dict[str, Any], env: dict[str, str] | None) -> dict[str, Any]:
    """Run ``_worker.py`` in ``python`` with ``config``; return its JSON result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
        path = handle.name
    try:
        result = subprocess.run(
            [str(python), str(HERE / "_worker.py"), path],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
    finally:
        os.unlink(path)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"{config['engine']} worker failed (exit {result.returncode}):\n{tail}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def flatten(engine: str, result: dict[str, Any]) -> dict[str, float]:
    """``{"tg": {"tps": 1.0}}`` -> ``{"ours tg": 1.0}`` (plus ``parallel_gen``, ``tg outside_ms``)."""
    figures = {}
    for task, data in result.items():
        if isinstance(data, dict):
            figures[f"{engine} {task}"] = float(data["tps"])
            if "gen_tps" in data:
                figures[f"{engine} {task}_gen"] = float(data["gen_tps"])
            if "outside_ms" in data:
                figures[f"{engine} {task} outside_ms"] = float(data["outside_ms"])
    return figures


# -- shared inputs ---------------------------------------------------------------------------------------
def model_facts(model: str) -> tuple[list[int], list[int]]:
    """(end-of-generation token ids, ordinary token ids usable for random prompts)."""
    from llamacpp_native import Llama
    from llamacpp_native.binding._library import lib

    llm = Llama(model, vocab_only=True)
    try:
        vocab = llm.model.vocab
        handle = vocab.handle
        eog, ordinary = [], []
        for token in range(vocab.n_tokens):
            if lib.llama_vocab_is_eog(handle, token):
                eog.append(token)
            elif not lib.llama_vocab_is_control(handle, token):
                ordinary.append(token)
        return eog, ordinary
    finally:
        llm.close()


def random_prompts(ordinary: Sequence[int], count: int, length: int, rng: random.Random) -> list[list[int]]:
    """``count`` random prompts whose first tokens all differ (so no prefix cache helps)."""
    firsts = rng.sample(list(ordinary), count)
    return [[first] + rng.choices(ordinary, k=length - 1) for first in firsts]


# -- reporting -------------------------------------------------------------------------------------------
def summarise(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median and spread (half the range, relative) of each figure."""
    out = {}
    for key, values in samples.items():
        median = statistics.median(values)
        spread = (max(values) - min(values)) / 2 / median if median else 0.0
        out[key] = {"median": median, "spread": spread, "n": float(len(values))}
    return out


def _cell(summary: dict[str, dict[str, float]], key: str | None, digits: int = 1) -> str:
    if key is None or key not in summary:
        return "-"
    item = summary[key]
    text = f"{item['median']:.{digits}f}"
    return text + (f" ±{item['spread'] * 100:.0f}%" if item["n"] > 1 else "")


def _ratio(summary: dict[str, dict[str, float]], top: str, bottom: str | None) -> float | None:
    if bottom is None or top not in summary or bottom not in summary:
        return None
    return summary[top]["median"] / summary[bottom]["median"]


def table_rows(summary: dict[str, dict[str, float]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The table as data: one dict per row."""
    rows = []
    for row in ROWS:
        if not any(k in summary for k in (row.native, row.peer, row.ours) if k):
            continue
        vs_native = _ratio(summary, row.ours, row.native)
        vs_peer = _ratio(summary, row.ours, row.peer)
        checks = []
        if row.native_target is not None and vs_native is not None:
            checks.append((f">={row.native_target:.2f}x native", vs_native >= row.native_target))
        if row.peer_target is not None and vs_peer is not None:
            checks.append((f">={row.peer_target:.2f}x peer", vs_peer >= row.peer_target))
        rows.append(
            {
                "key": row.key,
                "label": row.label.format(pp=args.pp, tg=args.tg, np=args.parallel),
                "native": _cell(summary, row.native),
                "peer": _cell(summary, row.peer),
                "ours": _cell(summary, row.ours),
                "vs_native": vs_native,
                "vs_peer": vs_peer,
                "checks": checks,
            }
        )
    return rows


def _markdown(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in body]
    return "\n".join(lines)


def render_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: t/s per engine, ours/native, ours/peer, and the targets."""
    header = ["path", "llama.cpp", "llama-cpp-python", "ours", "ours/native", "ours/peer", "target"]
    body = []
    for row in rows:
        target = ", ".join(f"{text} {'PASS' if ok else 'MISS'}" for text, ok in row["checks"]) or ""
        vs_native = "-" if row["vs_native"] is None else f"{row['vs_native']:.2f}x"
        vs_peer = "-" if row["vs_peer"] is None else f"{row['vs_peer']:.2f}x"
        body.append([row["label"], row["native"], row["peer"], row["ours"], vs_native, vs_peer, target])
    return _markdown(header, body)


OVERHEAD_ROWS = (
    (
        "generation, EOG suppressed",
        "llama-completion tg outside_ms",
        "peer tg outside_ms",
        "ours tg outside_ms",
    ),
    ("generation, no EOG logit bias", None, "peer tg_unbiased outside_ms", "ours tg_unbiased outside_ms"),
)


def render_overhead(summary: dict[str, dict[str, float]]) -> str:
    """Milliseconds per token outside ``llama_decode`` (sampling + binding): less load-sensitive."""
    body = []
    for label, native, peer, ours in OVERHEAD_ROWS:
        if ours not in summary and peer not in summary:
            continue
        cells = [_cell(summary, key, digits=2) for key in (native, peer, ours)]
        saved = (
            f"{summary[peer]['median'] - summary[ours]['median']:.2f}"
            if peer in summary and ours in summary
            else "-"
        )
        body.append([label, *cells, saved])
    if not body:
        return ""
    header = ["ms/token outside llama_decode", "llama.cpp", "llama-cpp-python", "ours", "peer - ours"]
    return _markdown(header, body)


def plot(summary: dict[str, dict[str, float]], rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """One small bar chart per path: t/s of each engine, ratios in the title, targets dashed."""
    plt = _serving.pyplot()

    keyed = {row.key: row for row in ROWS}
    columns = min(4, len(rows))
    lines = -(-len(rows) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.3 * columns, 3.6 * lines), squeeze=False)
    colours = {"llama.cpp": "#7f7f7f", "llama-cpp-python": "#ff7f0e", "ours": "#1f77b4"}
    for ax in axes.flat[len(rows) :]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, rows, strict=False):
        spec = keyed[row["key"]]
        names, values, errors = [], [], []
        for name, key in (("llama.cpp", spec.native), ("llama-cpp-python", spec.peer), ("ours", spec.ours)):
            if key and key in summary:
                names.append(name)
                values.append(summary[key]["median"])
                errors.append(summary[key]["spread"] * summary[key]["median"])
        ax.bar(range(len(names)), values, yerr=errors, color=[colours[n] for n in names], capsize=3)
        ax.set_xticks(range(len(names)), [n.replace("-python", "-\npython") for n in names], fontsize=8)
        # Dashed lines: where "ours" has to reach to meet a target.
        for key, target, colour in (
            (spec.native, spec.native_target, colours["llama.cpp"]),
            (spec.peer, spec.peer_target, colours["llama-cpp-python"]),
        ):
            if key in summary and target is not None:
                ax.axhline(summary[key]["median"] * target, color=colour, linestyle="--", linewidth=0.9)
        ratios = []
        if row["vs_native"] is not None:
            ratios.append(f"{row['vs_native']:.2f}x native")
        if row["vs_peer"] is not None:
            ratios.append(f"{row['vs_peer']:.2f}x peer")
        ax.set_title(row["label"].strip() + "\n" + ", ".join(ratios), fontsize=8)
        ax.set_ylabel("tokens / s", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    _serving.save_figure(fig, path, title)


# -- the run ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from llamacpp_integrations.models import default_model_path

    parser = _serving.benchmark_parser(__doc__)
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="threads for every engine (default: all cores available: %(default)s)",
    )
    parser.add_argument(
        "--n-ctx", type=int, default=1024, help="context of the single-sequence runs (%(default)s)"
    )
    parser.add_argument("--n-batch", type=int, default=512, help="logical batch (%(default)s)")
    parser.add_argument("--n-ubatch", type=int, default=512, help="physical batch (%(default)s)")
    parser.add_argument(
        "--flash-attn",
        choices=("on", "off"),
        default="on",
        help="flash attention for every engine (default: on, what llama.cpp's auto picks on CPU)",
    )
    parser.add_argument(
        "--pp", type=int, default=512, help="prompt tokens for prompt processing (%(default)s)"
    )
    parser.add_argument("--tg", type=int, default=128, help="tokens to generate (%(default)s)")
    parser.add_argument("--parallel", type=int, default=8, help="parallel sequences (%(default)s)")
    parser.add_argument(
        "--parallel-prompt", type=int, default=128, help="prompt tokens per sequence (%(default)s)"
    )
    parser.add_argument(
        "--parallel-tg", type=int, default=128, help="generated tokens per sequence (%(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds; the table shows medians (%(default)s)"
    )
    parser.add_argument("--seed", type=int, default=1234, help="sampling and prompt seed (%(default)s)")
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma-separated subset of {','.join(ENGINES)} (default: all)",
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="do not build/install missing references; skip them with a note instead",
    )
    parser.add_argument(
        "--plot",
        nargs="?",
        const="",
        default=None,
        metavar="PNG",
        help="write a bar chart (default file: results/bench-<time>.png)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="write all samples and the table as JSON (default file: results/bench-<time>.json)",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="",
        default=None,
        metavar="PROF",
        help="cProfile ours during the last round's generation (default: results/ours-tg.prof)",
    )
    args = parser.parse_args(argv)
    args.model = str(args.model or default_model_path())
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines: {unknown}; choose from {ENGINES}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def say(text: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    notes: list[str] = []

    eog, ordinary = model_facts(args.model)
    rng = random.Random(args.seed)
    sampling = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}
    base_config = {
        "model": args.model,
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "n_batch": args.n_batch,
        "n_ubatch": args.n_ubatch,
        "flash_attn": args.flash_attn == "on",
        "seed": args.seed,
        "tg": args.tg,
        "tg_prompt": TG_PROMPT,
        "parallel_tg": args.parallel_tg,
        "sampling": sampling,
        "eog_tokens": eog,
    }

    # References: build or locate them now, so a missing one is reported before any timing.
    tools: dict[str, Path] = {}
    peer_python: Path | None = None
    if "native" in args.engines:
        try:
            tools = reference.native_tools(build=not args.no_build, names=NATIVE_TOOLS)
        except reference.ReferenceError as error:
            notes.append(f"llama.cpp tools skipped: {error}")
    if "peer" in args.engines or "langchain" in args.engines:
        try:
            peer_python = reference.peer_python(install=not args.no_build)
        except reference.ReferenceError as error:
            notes.append(f"llama-cpp-python skipped: {error}")
    langchain_ours = "langchain" in args.engines and _importable(
        "llamacpp_integrations.langchain", "LlamaCpp"
    )
    if "langchain" in args.engines and not langchain_ours:
        notes.append(
            "our LangChain LlamaCpp is not importable yet (llamacpp_integrations.langchain): "
            "LangChain row shows the peer only"
        )

    jobs: list[str] = []
    if tools:
        jobs.append("native")
    if peer_python is not None and "peer" in args.engines:
        jobs.append("peer")
    if "ours" in args.engines:
        jobs.append("ours")
    if peer_python is not None and "langchain" in args.engines:
        jobs.append("langchain-peer")
    if langchain_ours:
        jobs.append("langchain-ours")

    samples: dict[str, list[float]] = {}
    load_before = os.getloadavg()
    for round_index in range(args.repeats):
        config = dict(
            base_config,
            pp_tokens=random_prompts(ordinary, 1, args.pp, rng)[0],
            parallel_prompts=random_prompts(ordinary, args.parallel, args.parallel_prompt, rng),
        )
        order = jobs[round_index % len(jobs) :] + jobs[: round_index % len(jobs)] if jobs else []
        for engine in order:
            say(f"round {round_index + 1}/{args.repeats}: {engine} ...")
            try:
                figures = run_engine(engine, args, config, tools, peer_python, round_index)
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
                notes.append(f"round {round_index + 1}, {engine}: {error}")
                say(f"  failed: {error}")
                continue
            for key, value in figures.items():
                samples.setdefault(key, []).append(value)
            say("  " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(figures.items())))
    load_after = os.getloadavg()

    summary = summarise(samples)
    rows = table_rows(summary, args)
    heading = (
        f"{Path(args.model).name}, {args.threads} threads, n_batch {args.n_batch}/{args.n_ubatch}, "
        f"flash-attn {args.flash_attn}, median of {args.repeats} rounds"
    )
    print(f"\n{heading}")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; {time.time() - started:.0f} s in all"
    )
    print()
    print(render_table(rows))
    overhead = render_overhead(summary)
    if overhead:
        print()
        print(overhead)
    for note in notes:
        print(f"\nnote: {note}")

    if args.json is not None:
        path = Path(args.json) if args.json else RESULTS / f"bench-{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "settings": {k: v for k, v in vars(args).items()},
                    "heading": heading,
                    "samples": samples,
                    "summary": summary,
                    "rows": rows,
                    "notes": notes,
                    "load": [load_before, load_after],
                },
                indent=2,
                default=str,
            )
        )
        print(f"\nwrote {path}")
    if args.plot is not None:
        path = Path(args.plot) if args.plot else RESULTS / f"bench-{stamp}.png"
        plot(summary, rows, path, heading)
        print(f"wrote {path}")
    return 0


def run_engine(
    engine: str,
    args: argparse.Namespace,
    config: dict[str, Any],
    tools: dict[str, Path],
    peer_python: Path | None,
    round_index: int,
) -> dict[str, float]:
    """One round of one engine: its figures, keyed like ``ROWS`` expects."""
    if engine == "native":
        figures = run_llama_bench(tools["llama-bench"], args)
        figures.update(
            run_llama_completion(tools["llama-completion"], args, TG_PROMPT, args.seed + round_index)
        )
        figures.update(run_batched_bench(tools["llama-batched-bench"], args))
        return figures
    tasks = ["tg"] if engine.startswith("langchain") else ["pp", "tg", "tg_unbiased", "parallel"]
    worker_config = dict(config, engine=engine, tasks=tasks, seed=args.seed + round_index)
    if engine == "ours" and args.profile is not None and round_index == args.repeats - 1:
        profile = Path(args.profile) if args.profile else RESULTS / "ours-tg.prof"
        profile.parent.mkdir(parents=True, exist_ok=True)
        worker_config["profile"] = str(profile)
    if engine in ("peer", "langchain-peer"):
        assert peer_python is not None
        result = run_worker(peer_python, worker_config, reference.peer_env())
    else:
        result = run_worker(Path(sys.executable), worker_config, None)
    return flatten(engine, result)


def _importable(module: str, name: str) -> bool:
    try:
        imported = __import__(module, fromlist=[name])
    except ImportError:
        return False
    return hasattr(imported, name)


if __name__ == "__main__":
    sys.exit(main())
