"""Concurrent streaming clients over HTTP: our server against llama-server and llama-cpp-python's.

For each client count N (``--clients``, default 1,4,8,16), each target server is
started afresh on a free 127.0.0.1 port, waited for until it has loaded the model,
warmed up with one short stream per client, and then N threads released by one
barrier each stream one ``POST /v1/completions`` of exactly ``--tokens`` tokens
("Story <n>:" prompts, new ones at every step; temperature 0.8, top-k 40, top-p
0.95, min-p 0.05, no repeat penalty, a fixed seed per client, end-of-generation
tokens suppressed).  Reported per target and N:

* aggregate generation rate: generated tokens of all clients / wall time from the
  barrier to the last stream's end (HTTP, prompt processing and queueing included);
* time to first token (TTFT): from a client's request to its first token chunk;
  p50 and p95 over the clients (pooled over rounds).

Targets, all on the same model, threads (``-t``/``-tb``), batch sizes and context
(``--ctx-per-slot`` x N tokens):

* **ours**: ``python -m llamacpp_integrations.server --n_parallel N`` (continuous
  batching in our engine), ``ignore_eos``;
* **llama-server** (the ceiling), built from the same pinned llama.cpp by
  ``reference.py``: ``llama-server -np N -kvu --cont-batching``, ``ignore_eos``;
* **llama-cpp-python** (the peer): ``python -m llama_cpp.server`` from the peer venv,
  on our ``libllama.so`` (``LLAMA_CPP_LIB_PATH``).  It has one context and serves one
  request at a time; ``--interrupt_requests false`` makes the others wait instead
  of cutting the running stream short.  It has no ``ignore_eos``: the end tokens
  get a ``logit_bias`` of -100 instead.

Every client's tokens are counted from its stream (``usage.completion_tokens``,
which ours and llama-server send; llama-cpp-python sends none, so its token chunks
are counted) and must equal ``--tokens`` with finish reason "length"; a target
for which that fails is flagged with "!" in the table and explained below it.

``--rss-requests M`` runs a different check instead: M sequential short requests
(alternately streamed and not) to our server, and its resident memory (VmRSS from
/proc/<pid>/status) after loading, after the first request, half-way and at the
end, to show that memory stays flat.

Compare ratios within one run only; run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _serving  # noqa: E402
import _worker  # noqa: E402
import bench  # noqa: E402
import concurrency  # noqa: E402
import reference  # noqa: E402
from _serving import LOOPBACK  # noqa: E402

RESULTS = HERE / "results"
TARGETS = ("ours", "server", "peer")
LABELS = {"ours": "ours", "server": "llama-server", "peer": "llama-cpp-python"}
NAMES = {"ours": "our server", "server": "llama-server", "peer": "llama-cpp-python's server"}
READY_PATHS = {"ours": "/health", "server": "/health", "peer": "/v1/models"}  # the peer has no /health
COMPLETIONS = "/v1/completions"
SAMPLING = concurrency.SAMPLING  # repeat_penalty 1.0 explicitly: llama-cpp-python's default is 1.1
PROMPT = concurrency.PROMPT
WARMUP_PROMPT = concurrency.WARMUP_PROMPT
RSS_PROMPT = "Request {number}:"
PEER_EOG_BIAS = -100.0
# Environment variables that would override the command line of a server (uvicorn reads
# HOST and PORT itself in llama-cpp-python's server; ours reads LLAMACPP_*).
PEER_ENV_OVERRIDES = ("HOST", "PORT", "CONFIG_FILE", "API_KEY", "SSL_KEYFILE", "SSL_CERTFILE")


# -- the three servers ------------------------------------------------------------------------------------
def ours_command(args: argparse.Namespace, clients: int, port: int) -> list[str]:
    """Our server: ``n_ubatch`` = ``n_batch``, flash attention auto (on for the CPU), swa-full, unified KV."""
    options = {
        "--model": args.model, "--host": LOOPBACK, "--port": port, "--n_ctx": clients * args.ctx_per_slot,
        "--n_parallel": clients, "--n_threads": args.threads, "--n_batch": args.n_batch,
        "--max_queue": max(64, clients),
    }  # fmt: skip
    return [sys.executable, "-m", "llamacpp_integrations.server", *bench._options(options)]


def ours_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("LLAMACPP_")}


def llama_server_command(binary: Path, args: argparse.Namespace, clients: int, port: int) -> list[str]:
    """concurrency.py's ``llama-server`` command, with ``n_ubatch`` = ``n_batch`` and flash attention on."""
    settings = argparse.Namespace(**vars(args), n_ubatch=args.n_batch, flash_attn="on")
    return concurrency.server_command(binary, settings, clients, port)


def peer_command(python: Path, args: argparse.Namespace, clients: int, port: int) -> list[str]:
    """llama-cpp-python's server, one context of N x per-slot tokens, requests waiting their turn."""
    options = {
        "--model": args.model, "--host": LOOPBACK, "--port": port, "--n_ctx": clients * args.ctx_per_slot,
        "--n_threads": args.threads, "--n_threads_batch": args.threads, "--n_batch": args.n_batch,
        "--n_ubatch": args.n_batch, "--flash_attn": "true", "--seed": args.seed,
        "--interrupt_requests": "false",  # its default cuts a running stream when another request comes
        "--verbose": "false",
    }  # fmt: skip
    return [str(python), "-m", "llama_cpp.server", *bench._options(options)]


def peer_env() -> dict[str, str]:
    env = reference.peer_env()  # LLAMA_CPP_LIB_PATH: our libllama.so
    return {k: v for k, v in env.items() if k.upper() not in PEER_ENV_OVERRIDES}


# -- requests ---------------------------------------------------------------------------------------------
def request_body(
    target: str, prompt: str, seed: int, max_tokens: int, eog_bias: dict[str, float], stream: bool = True
) -> dict[str, Any]:
    """One ``/v1/completions`` body: the shared sampler, end tokens suppressed as ``target`` allows."""
    body: dict[str, Any] = dict(SAMPLING, prompt=prompt, seed=seed, max_tokens=max_tokens, stream=stream)
    if target == "peer":
        body["logit_bias"] = eog_bias
    else:
        body["ignore_eos"] = True
        if stream:
            body["stream_options"] = {"include_usage": True}
    return body


def stream_completion(port: int, target: str, body: dict[str, Any], tally: dict[str, Any]) -> Iterator[Any]:
    """Stream one completion; yield each token chunk; leave the token count etc. in ``tally``.

    The count is ``usage.completion_tokens`` where the stream carries usage, else the
    number of token chunks (one per token, bar characters split over several tokens).
    """
    chunks, usage, finish = 0, None, None
    events = _serving.sse_events(port, COMPLETIONS, body, NAMES[target])
    try:
        for event in events:
            if event.get("usage"):
                usage = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or []:
                reason = choice.get("finish_reason")
                if reason is not None:
                    finish = reason
                if reason is None or choice.get("text"):
                    chunks += 1
                    yield event
    finally:
        events.close()
    tally.update(
        chunks=chunks,
        usage=usage,
        finish=finish,
        tokens=usage if usage is not None else chunks,
        source="usage" if usage is not None else "chunks",
    )


def client_figures(
    records: list[dict[str, float]], tallies: list[dict[str, Any]], expected: int
) -> dict[str, Any]:
    """Rate (counted tokens / barrier to last end), TTFT per client, and whether each got ``expected``."""
    started = min(r["start"] for r in records)
    wall = max(r["end"] for r in records) - started
    counts = [int(t.get("tokens", 0)) for t in tallies]
    finishes = [t.get("finish") for t in tallies]
    return {
        "clients": len(records),
        "tokens": sum(counts),
        "wall_s": wall,
        "tps": sum(counts) / wall,
        "ttft_s": [r.get("first", r["end"]) - r["start"] for r in records],
        "end_s": [r["end"] - started for r in records],
        "counts": counts,
        "finish": finishes,
        "count_source": sorted({str(t.get("source")) for t in tallies}),
        "exact": all(c == expected for c in counts) and all(f == "length" for f in finishes),
    }


Launcher = Callable[[str, int, int], tuple[list[str], dict[str, str]]]
"""``launch(target, clients, port)`` -> (command, environment)."""


def run_target(
    target: str, args: argparse.Namespace, clients: int, inputs: dict[str, Any], launch: Launcher
) -> dict[str, Any]:
    """A fresh server for ``target``: warm-up round, then the measured one."""
    port = _serving.free_port()
    command, env = launch(target, clients, port)
    prompts, seeds, warmups = inputs["prompts"], inputs["seeds"], inputs["warmup_prompts"]
    bias = inputs["eog_bias"]
    with _serving.running_process(command, port, NAMES[target], READY_PATHS[target], env) as (_, load_s):
        warm = [{} for _ in range(clients)]
        _worker.drive_clients(
            clients,
            lambda i: stream_completion(
                port, target, request_body(target, warmups[i], seeds[i], args.warmup_tokens, bias), warm[i]
            ),
        )
        tallies: list[dict[str, Any]] = [{} for _ in range(clients)]
        records = _worker.drive_clients(
            clients,
            lambda i: stream_completion(
                port, target, request_body(target, prompts[i], seeds[i], args.tokens, bias), tallies[i]
            ),
        )
    return dict(client_figures(records, tallies, args.tokens), load_s=load_s)


# -- end tokens -------------------------------------------------------------------------------------------
def end_tokens(model: str) -> dict[str, list[int]]:
    """EOS and ``<end_of_turn>`` by tokenizing (a vocab-only model), and every other EOG token.

    ``ignore_eos`` suppresses every end-of-generation token in ours and llama-server;
    the peer's logit bias covers the same set.
    """
    from llamacpp_native import Llama

    llm = Llama(model, vocab_only=True)
    try:
        named = {"eos": [llm.token_eos()]}
        end_of_turn = llm.tokenize("<end_of_turn>", add_bos=False, special=True)
        if len(end_of_turn) == 1:  # a model without such a token splits the text into pieces
            named["<end_of_turn>"] = end_of_turn
    finally:
        llm.close()
    eog, _ordinary = bench.model_facts(model)
    listed = {t for ids in named.values() for t in ids}
    return dict(named, other_eog=sorted(set(eog) - listed))


# -- the table --------------------------------------------------------------------------------------------
Summary = dict[str, dict[int, dict[str, float]]]


def _flagged(samples: dict[str, dict[int, list[dict[str, Any]]]], target: str, clients: int) -> bool:
    return any(not r["exact"] for r in samples.get(target, {}).get(clients, []))


def render_table(
    summary: Summary, samples: dict[str, dict[int, list[dict[str, Any]]]], clients_list: Sequence[int]
) -> str:
    """Markdown: t/s per target ("!": a client did not get exactly --tokens), ratios, TTFT."""
    header = [
        "clients", "ours t/s", "llama-server t/s", "llama-cpp-python t/s", "ours/llama-server",
        "ours/llama-cpp-python", "TTFT p50/p95 ours (ms)", "TTFT p50/p95 llama-server (ms)",
        "TTFT p50/p95 llama-cpp-python (ms)", "TTFT p95 ours/llama-server",
    ]  # fmt: skip
    body = []
    for n in clients_list:
        rates = [
            concurrency._rate(summary, t, n) + (" !" if _flagged(samples, t, n) else "") for t in TARGETS
        ]
        body.append(
            [
                str(n),
                *rates,
                concurrency._ratio(summary, n, "ours", "server", "tps"),
                concurrency._ratio(summary, n, "ours", "peer", "tps"),
                *(concurrency._ttft(summary, t, n) for t in TARGETS),
                concurrency._ratio(summary, n, "ours", "server", "ttft_p95_ms"),
            ]
        )
    return bench._markdown(header, body)


def count_notes(samples: dict[str, dict[int, list[dict[str, Any]]]]) -> list[str]:
    """One line per flagged measurement: what each client got."""
    notes = []
    for target, by_clients in samples.items():
        for clients, rounds in by_clients.items():
            for index, r in enumerate(rounds):
                if not r["exact"]:
                    notes.append(
                        f"! {LABELS[target]}, {clients} clients, round {index + 1}: tokens per client "
                        f"{r['counts']} (from {'/'.join(r['count_source'])}), finish {r['finish']}"
                    )
    return notes


# -- memory over many requests (--rss-requests) -----------------------------------------------------------
def vm_rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def run_rss(args: argparse.Namespace, eog_bias: dict[str, float]) -> dict[str, Any]:
    """M sequential short requests to our server (odd ones streamed); VmRSS after each."""
    clients = max(args.clients)
    port = _serving.free_port()
    command = ours_command(args, clients, port)
    mismatches: list[str] = []
    with _serving.running_process(command, port, NAMES["ours"], READY_PATHS["ours"], ours_env()) as (
        process,
        load_s,
    ):
        rss = [vm_rss_kib(process.pid)]  # rss[i]: after request i (0: loaded, none yet)
        started = time.perf_counter()
        for number in range(1, args.rss_requests + 1):
            stream = number % 2 == 1
            prompt = RSS_PROMPT.format(number=number)
            body = request_body("ours", prompt, args.seed + number, args.rss_tokens, eog_bias, stream)
            if stream:
                tally: dict[str, Any] = {}
                for _chunk in stream_completion(port, "ours", body, tally):
                    pass
                made, finish = tally["tokens"], tally["finish"]
            else:
                answer = _serving.post_json(port, COMPLETIONS, body, NAMES["ours"])
                made = answer.get("usage", {}).get("completion_tokens")
                finish = answer["choices"][0].get("finish_reason")
            if made != args.rss_tokens or finish != "length":
                mismatches.append(f"request {number}: {made} tokens, finish {finish!r}")
            rss.append(vm_rss_kib(process.pid))
        seconds = time.perf_counter() - started
    return {
        "slots": clients,
        "requests": args.rss_requests,
        "tokens_each": args.rss_tokens,
        "load_s": load_s,
        "seconds": seconds,
        "rss_kib": rss,
        "mismatches": mismatches,
    }


def render_rss(result: dict[str, Any]) -> str:
    rss, m = result["rss_kib"], result["requests"]
    points = [("loaded, no request yet", 0), ("after request 1 (start)", 1)]
    points += [(f"after request {m // 2} (middle)", m // 2), (f"after request {m} (end)", m)]
    body = [[label, f"{rss[i] / 1024:.1f}"] for label, i in points if i <= m]
    table = bench._markdown(["our server", "VmRSS (MiB)"], body)
    change = (rss[m] - rss[1]) / 1024
    return (
        f"{table}\n\nfrom request 1 to {m}: {change:+.1f} MiB ({100 * change * 1024 / rss[1]:+.1f}%); "
        f"highest {max(rss) / 1024:.1f} MiB; {m} requests of {result['tokens_each']} tokens "
        f"in {result['seconds']:.1f} s, {result['slots']} slot(s)"
    )


def plot_rss(result: dict[str, Any], path: Path, title: str) -> None:
    plt = _serving.pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(len(result["rss_kib"])), [k / 1024 for k in result["rss_kib"]], marker=".")
    ax.set_xlabel("requests served")
    ax.set_ylabel("our server's VmRSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    _serving.save_figure(fig, path, title)


# -- the run ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from llamacpp_integrations.models import default_model_path

    parser = _serving.benchmark_parser(__doc__)
    _serving.add_load_options(parser, clients="1,4,8,16", targets=TARGETS)
    parser.add_argument("--n-batch", type=int, default=512, help="logical and physical batch (%(default)s)")
    parser.add_argument(
        "--rss-requests",
        type=int,
        default=None,
        metavar="M",
        help="instead of the benchmark: M sequential requests to our server (with the largest --clients "
        "as slots), reporting its VmRSS at the start, middle and end",
    )
    parser.add_argument(
        "--rss-tokens", type=int, default=16, help="tokens per --rss-requests request (%(default)s)"
    )
    _serving.add_output_options(parser, "server-bench")
    args = parser.parse_args(argv)
    args.model = str(args.model or default_model_path())
    args.targets = _serving.chosen_targets(parser, args.targets, TARGETS)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if min(args.tokens, args.warmup_tokens, args.rss_tokens) < 1:
        parser.error("--tokens, --warmup-tokens and --rss-tokens must be at least 1")
    if args.rss_requests is not None and args.rss_requests < 2:
        parser.error("--rss-requests must be at least 2")
    longest = max(args.tokens, args.rss_tokens if args.rss_requests else 0)
    if args.ctx_per_slot < longest + 32:
        parser.error(f"--ctx-per-slot must leave room for the prompt: at least {longest + 32}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    notes: list[str] = []
    say = bench.say

    ends = end_tokens(args.model)
    eog_ids = sorted({t for ids in ends.values() for t in ids})
    eog_bias = {str(t): PEER_EOG_BIAS for t in eog_ids}
    load_before = os.getloadavg()

    if args.rss_requests is not None:
        say(f"our server: {args.rss_requests} sequential requests of {args.rss_tokens} tokens ...")
        rss = run_rss(args, eog_bias)
        heading = (
            f"{Path(args.model).name}, our server's memory over {args.rss_requests} requests, "
            f"{args.threads} threads, context {args.ctx_per_slot} per slot"
        )
        _print_heading(args, heading, load_before, started)
        print(render_rss(rss))
        for mismatch in rss["mismatches"]:
            print(f"\nnote: not exactly {args.rss_tokens} tokens: {mismatch}")
        _write_outputs(
            args, stamp, heading, {"rss": rss, "end_tokens": ends}, lambda p: plot_rss(rss, p, heading)
        )
        return 0

    # References first, so that a missing one is reported before any timing.
    server_binary: Path | None = None
    peer_python: Path | None = None
    if "server" in args.targets:
        try:
            server_binary = reference.native_tools(build=not args.no_build, names=("llama-server",))[
                "llama-server"
            ]
        except reference.ReferenceError as error:
            notes.append(f"llama-server skipped: {error}")
    if "peer" in args.targets:
        try:
            peer_python = reference.peer_server_python(install=not args.no_build)
        except reference.ReferenceError as error:
            notes.append(f"llama-cpp-python skipped: {error}")
    jobs = [
        t
        for t in args.targets
        if (t != "server" or server_binary is not None) and (t != "peer" or peer_python is not None)
    ]

    def launch(target: str, clients: int, port: int) -> tuple[list[str], dict[str, str]]:
        if target == "ours":
            return ours_command(args, clients, port), ours_env()
        if target == "server":
            assert server_binary is not None
            return llama_server_command(server_binary, args, clients, port), dict(os.environ)
        assert peer_python is not None
        return peer_command(peer_python, args, clients, port), peer_env()

    samples: dict[str, dict[int, list[dict[str, Any]]]] = {t: {n: [] for n in args.clients} for t in jobs}
    step = 0
    for round_index in range(args.rounds):
        for clients in args.clients:
            # Fresh prompts for every step (no prompt-cache hits), the same for every target.
            first = 100 * step
            inputs = {
                "prompts": [PROMPT.format(number=first + i + 1) for i in range(clients)],
                "warmup_prompts": [WARMUP_PROMPT.format(number=first + i + 1) for i in range(clients)],
                "seeds": [args.seed + 1000 * round_index + i for i in range(clients)],
                "eog_bias": eog_bias,
            }
            order = jobs[step % len(jobs) :] + jobs[: step % len(jobs)] if jobs else []
            step += 1
            for target in order:
                say(f"round {round_index + 1}/{args.rounds}, {clients} clients: {LABELS[target]} ...")
                try:
                    figures = run_target(target, args, clients, inputs, launch)
                except (RuntimeError, OSError, json.JSONDecodeError, subprocess.SubprocessError) as error:
                    notes.append(f"round {round_index + 1}, {clients} clients, {LABELS[target]}: {error}")
                    say(f"  failed: {error}")
                    continue
                samples[target][clients].append(figures)
                ttft = sorted(figures["ttft_s"])
                say(
                    f"  {figures['tps']:.1f} t/s, TTFT {1000 * ttft[0]:.0f}-{1000 * ttft[-1]:.0f} ms, "
                    f"{figures['wall_s']:.2f} s, load {figures['load_s']:.1f} s"
                    + ("" if figures["exact"] else f"; NOT {args.tokens} tokens each: {figures['counts']}")
                )

    summary = concurrency.summarise(samples)
    heading = (
        f"{Path(args.model).name}, {args.tokens} tokens per client over HTTP, {args.threads} threads, "
        f"context {args.ctx_per_slot} per slot, n_batch {args.n_batch}, {args.rounds} round(s)"
    )
    _print_heading(args, heading, load_before, started)
    print(
        f"end tokens suppressed: {eog_ids} (ignore_eos for ours and llama-server, "
        f"logit bias {PEER_EOG_BIAS:g} for llama-cpp-python)\n"
    )
    print(render_table(summary, samples, args.clients))
    flags = count_notes(samples)
    if flags:
        print(f"\n! some client did not get exactly {args.tokens} tokens with finish reason 'length':")
        for line in flags:
            print(line)
    for note in notes:
        print(f"\nnote: {note}")
    extra = {"samples": samples, "summary": summary, "end_tokens": ends, "notes": notes + flags}
    _write_outputs(args, stamp, heading, extra, lambda p: concurrency.plot(summary, args.clients, p, heading))
    return 0


def _print_heading(
    args: argparse.Namespace, heading: str, load_before: tuple[float, float, float], started: float
) -> None:
    load_after = os.getloadavg()
    print(f"\n{time.strftime('%Y-%m-%d %H:%M %Z')}: {heading}")
    print(
        f"machine: {_serving.cpu_model()}, {os.cpu_count()} cores, {args.threads} threads; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; {time.time() - started:.0f} s in all"
    )
    print()


def _write_outputs(
    args: argparse.Namespace,
    stamp: str,
    heading: str,
    extra: dict[str, Any],
    plot: Callable[[Path], None],
) -> None:
    if args.json is not None:
        path = Path(args.json) if args.json else RESULTS / f"server-bench-{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"settings": vars(args), "heading": heading, "cpu": _serving.cpu_model(), **extra}
        path.write_text(json.dumps(document, indent=2, default=str))
        print(f"\nwrote {path}")
    if args.plot is not None:
        path = Path(args.plot) if args.plot else RESULTS / f"server-bench-{stamp}.png"
        plot(path)
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
