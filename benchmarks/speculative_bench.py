"""Speculative decoding: the speed-up of our server against llama-server's own, on the same model pair.

Each target server is started on a free 127.0.0.1 port with one slot, and answers the same
sequence of greedy ``POST /v1/completions`` requests of ``--tokens`` tokens each: prompts that
ask the model to repeat a block of code it was just shown, the case speculation is made for
(edits, extraction, quoting).  Modes:

* **plain**: no speculation;
* **ngram**: guesses looked up in the prompt and reply (ours ``--spec_type ngram``; llama-server
  ``--spec-type ngram-simple`` with the same n-gram size and guess length);
* **draft**: a draft model (``--draft-model``, default the model itself, so nearly every guess is
  kept and the figure shows the machinery's cost rather than a real pair's gain; llama-server
  ``--spec-type draft-simple --model-draft``).

Reported per target and mode: generated tokens per second (whole requests, prompt included,
sequential), the speed-up over the same target's plain mode, the share of guesses kept
(from ``usage.completion_tokens_details`` or llama-server's ``timings.draft_n*``), and ours over
llama-server.  Every reply must have exactly ``--tokens`` tokens, and our replies must equal our
plain mode's (llama-server's are checked against its own plain mode).

Compare ratios within one run only; run on a quiet machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _serving  # noqa: E402
import reference  # noqa: E402

BLOCKS = [
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n"
    "def mul(a, b):\n    return a * b\n\n"
    "def div(a, b):\n    if b == 0:\n        raise ZeroDivisionError('b is zero')\n    return a / b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "    def __add__(self, other):\n        return Point(self.x + other.x, self.y + other.y)\n\n"
    "    def __repr__(self):\n        return f'Point({self.x}, {self.y})'\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print('even', i)\n    else:\n        print('odd', i)\n"
    "total = sum(i * i for i in range(10))\nprint('total', total)\n",
]
MODES = ("plain", "ngram", "draft")
TARGETS = ("ours", "llama-server")


def prompts() -> list[str]:
    """The requests of one round: each block, to be repeated."""
    return [f"Repeat this code exactly, twice:\n{block}\nHere it is:\n" for block in BLOCKS]


def server_command(target: str, mode: str, model: str, draft: str, port: int, args: Any) -> list[str]:
    """The command line that starts ``target`` in ``mode``."""
    threads, ctx = str(args.threads), str(args.ctx)
    if target == "ours":
        command = [sys.executable, "-m", "llamacpp_integrations.server", "--model", model]
        command += ["--port", str(port), "--n_ctx", ctx, "--n_parallel", "1", "--n_threads", threads]
        if mode == "ngram":
            command += ["--spec_type", "ngram", "--draft_max", str(args.ngram_guesses)]
        elif mode == "draft":
            command += ["--model_draft", draft, "--draft_max", str(args.draft_guesses)]
        return command
    server = reference.native_tools(build=not args.no_build, names=("llama-server",))["llama-server"]
    command = [str(server), "-m", model, "--host", _serving.LOOPBACK, "--port", str(port)]
    command += ["-c", ctx, "-np", "1", "-t", threads, "-tb", threads, "--no-webui"]
    if mode == "ngram":
        command += ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3"]
        command += ["--spec-ngram-simple-size-m", str(args.ngram_guesses)]
    elif mode == "draft":
        command += ["--spec-type", "draft-simple", "--model-draft", draft]
        command += ["--spec-draft-n-max", str(args.draft_guesses), "-ngld", "0"]
    return command


def kept(answer: dict[str, Any]) -> tuple[int, int]:
    """(guesses verified, guesses kept) of one answer, from our usage or llama-server's timings."""
    details = answer.get("usage", {}).get("completion_tokens_details") or {}
    if "accepted_prediction_tokens" in details:
        accepted = int(details["accepted_prediction_tokens"])
        return accepted + int(details.get("rejected_prediction_tokens", 0)), accepted
    timings = answer.get("timings") or {}
    return int(timings.get("draft_n", 0)), int(timings.get("draft_n_accepted", 0))


def measure(target: str, mode: str, model: str, draft: str, args: Any) -> dict[str, Any]:
    """Start one server, warm it up, and time ``--rounds`` rounds of the requests."""
    port = _serving.free_port()
    command = server_command(target, mode, model, draft, port, args)
    rates: list[float] = []
    texts: list[str] = []
    verified = accepted = 0
    with _serving.running_process(command, port, f"{target} ({mode})"):
        body = {"prompt": "Hello", "max_tokens": 8, "temperature": 0}
        _serving.post_json(port, "/v1/completions", body, target)
        for _round in range(args.rounds):
            tokens, started = 0, time.perf_counter()
            texts = []
            for prompt in prompts():
                body = {"prompt": prompt, "max_tokens": args.tokens, "temperature": 0, "ignore_eos": True}
                answer = _serving.post_json(port, "/v1/completions", body, target)
                n = int(answer["usage"]["completion_tokens"])
                if n != args.tokens:
                    raise RuntimeError(f"{target} ({mode}) generated {n} tokens, not {args.tokens}")
                tokens += n
                texts.append(answer["choices"][0]["text"])
                v, a = kept(answer)
                verified, accepted = verified + v, accepted + a
            rates.append(tokens / (time.perf_counter() - started))
    share = accepted / verified if verified else 0.0
    return {"rate": statistics.median(rates), "texts": texts, "kept": share}


def main(argv: list[str] | None = None) -> int:
    """Run the modes on each target and print the table of rates and ratios."""
    parser = _serving.benchmark_parser(__doc__)
    parser.add_argument("--draft-model", default=None, help="draft GGUF (default: the model itself)")
    parser.add_argument("--tokens", type=int, default=96, help="tokens per reply (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians (%(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every target (%(default)s)")
    parser.add_argument("--ctx", type=int, default=2048, help="context of every server (%(default)s)")
    parser.add_argument("--ngram-guesses", type=int, default=10, help="guesses per step, ngram (%(default)s)")
    parser.add_argument("--draft-guesses", type=int, default=4, help="guesses per step, draft (%(default)s)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    parser.add_argument("--no-build", action="store_true", help="do not build llama-server when missing")
    args = parser.parse_args(argv)
    if args.model is None:
        from llamacpp_integrations.models import default_model_path

        args.model = str(default_model_path())
    draft = args.draft_model or args.model
    modes = [m for m in MODES if m in args.modes.split(",")]
    targets = _serving.chosen_targets(parser, args.targets, TARGETS)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for mode in modes:
        for target in targets:
            print(f"{target}, {mode} ...", flush=True)
            results[(target, mode)] = measure(target, mode, args.model, draft, args)
            print(f"  {results[(target, mode)]['rate']:.1f} t/s", flush=True)
    print(f"\n{_serving.cpu_model()}, {args.threads} threads, {args.tokens} tokens per reply, greedy\n")
    header = ["mode", "target", "t/s", "speed-up over plain", "guesses kept", "same text as plain"]
    print("| " + " | ".join([*header, "ours / llama-server"]) + " |")
    print("|---|---|---:|---:|---:|---|---:|")
    for mode in modes:
        for target in targets:
            result = results[(target, mode)]
            plain = results.get((target, "plain"))
            speedup = f"{result['rate'] / plain['rate']:.2f}x" if plain else "-"
            same = "-" if plain is None or mode == "plain" else str(result["texts"] == plain["texts"]).lower()
            other = results.get(("llama-server", mode))
            ratio = f"{result['rate'] / other['rate']:.2f}x" if target == "ours" and other else ""
            kept_share = f"{result['kept']:.0%}" if mode != "plain" else "-"
            row = [mode, target, f"{result['rate']:.1f}", speedup, kept_share, same, ratio]
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
