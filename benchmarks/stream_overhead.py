"""What streaming tool calls and thinking cost over plain streaming, and whether long replies slow down.

Every mode streams a chat reply through ``Llama.create_chat_completion(stream=True)``
with the same user grammar shape (a fixed opening, then nearly free text), end-of-generation
tokens suppressed, so each generates exactly ``--tokens`` tokens and only the output
processing differs:

* ``plain``: the model's own template, no parser (text passes straight through);
* ``plain, parsed``: a thinking template (Qwen3), so llama.cpp's chat parser reads
  the reply (content passes its plain-text shortcut);
* ``reasoning``: the same template, the reply all thinking (``reasoning_content`` deltas);
* ``tool call``: the same template with a tool offered, the reply one call whose
  string argument grows token by token (the parser runs on every token).

Rates count from the first to the last chunk (prompt processing left out) and are
aggregated over ``--streams`` concurrent streams (threads).  ``--long N`` also
compares an N-token reply with a 100-token one, for ``plain`` and ``tool call``.
Compare ratios measured in the same run; a shared machine is noisy.

    python benchmarks/stream_overhead.py --streams 1,8 --long 4000 --json
"""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from _serving import benchmark_parser, cpu_model

QWEN3 = "Qwen-Qwen3-0.6B.jinja"
TOOL = {
    "type": "function",
    "function": {
        "name": "write",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
}
BODY = "[^<]+"  # nearly anything: the model's own choice is almost always admitted
ARGUMENT = '[^"\\\\<\\n]+'  # the characters of a JSON string that need no escaping
MODES: dict[str, tuple[bool, str, bool]] = {
    # name: (Qwen3 template, grammar, tool offered)
    "plain": (False, f'root ::= "x" {BODY}', False),
    "plain, parsed": (True, f'root ::= "x" {BODY}', False),
    "reasoning": (True, f'root ::= "<think>\\n" {BODY}', False),
    "tool call": (
        True,
        'root ::= "<tool_call>\\n{\\"name\\": \\"write\\", \\"arguments\\": {\\"text\\": \\"" ' + ARGUMENT,
        True,
    ),
}


@dataclass
class Result:
    mode: str
    streams: int
    tokens: int
    tokens_per_s: float
    cpu_ms_per_token: float


def _stream(llama: Any, mode: str, tokens: int, bias: dict[int, float], out: list[tuple[int, float]]) -> None:
    _qwen, grammar, tool = MODES[mode]
    kwargs: dict[str, Any] = {"tools": [TOOL]} if tool else {}
    first = last = 0.0
    made = 0
    for chunk in llama.create_chat_completion(
        [{"role": "user", "content": "Write a long story."}],
        grammar=grammar,
        max_tokens=tokens,
        logit_bias=bias,
        temperature=0.0,
        stream=True,
        **kwargs,
    ):
        now = time.perf_counter()
        first = first or now
        last = now
        usage = chunk.get("usage")
        if usage:
            made = usage["completion_tokens"]
    out.append((made, last - first))


def measure(llama: Any, mode: str, streams: int, tokens: int, bias: dict[int, float]) -> Result:
    """``streams`` concurrent replies of ``tokens`` tokens each; aggregate decode rate and CPU per token."""
    results: list[tuple[int, float]] = []
    threads = [
        threading.Thread(target=_stream, args=(llama, mode, tokens, bias, results)) for _ in range(streams)
    ]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    made = sum(n for n, _ in results)
    span = max(s for _, s in results) if streams > 1 else results[0][1]
    rate = (made - streams) / span if streams == 1 else made / wall
    return Result(mode, streams, min(n for n, _ in results), rate, 1000 * cpu / made)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per reply (%(default)s)")
    parser.add_argument("--streams", default="1,8", help="concurrent stream counts (%(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per cell; the median is shown (%(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (%(default)s)")
    parser.add_argument("--long", type=int, default=0, help="also compare an N-token reply with 100 tokens")
    parser.add_argument("--json", nargs="?", const="", default=None, help="write the results as JSON")
    parser.add_argument(
        "--templates", default=None, help="llama.cpp's models/templates folder (default: the pinned source)"
    )
    args = parser.parse_args()

    from llamacpp_native import Llama

    if args.model is None:
        from llamacpp_integrations.models import default_model_path

        args.model = str(default_model_path())
    templates = Path(args.templates) if args.templates else _pinned_templates()
    counts = [int(n) for n in args.streams.split(",")]
    n_ctx = max(max(counts) * (args.tokens + 128), args.long + 256)
    common = dict(n_ctx=n_ctx, n_parallel=max(counts), n_threads=args.threads, n_threads_batch=args.threads)
    llamas = {
        False: Llama(args.model, **common),
        True: Llama(args.model, chat_template=(templates / QWEN3).read_text(), **common),
    }
    vocab = llamas[False].model.vocab
    bias = {t: float("-inf") for t in range(vocab.n_tokens) if vocab.is_eog(t)}
    rows: list[Result] = []
    for streams in counts:
        for mode in MODES:
            llama = llamas[MODES[mode][0]]
            measure(llama, mode, streams, 8, bias)  # warm up (prompt cached, grammar index built)
            runs = [measure(llama, mode, streams, args.tokens, bias) for _ in range(args.repeats)]
            rows.append(
                min(runs, key=lambda r: abs(r.tokens_per_s - statistics.median(x.tokens_per_s for x in runs)))
            )
    longs: list[Result] = []
    if args.long:
        for mode in ("plain", "tool call"):
            llama = llamas[MODES[mode][0]]
            for tokens in (100, args.long):
                longs.append(measure(llama, mode, 1, tokens, bias))
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"{stamp}  {Path(args.model).name}  threads {args.threads}  tokens {args.tokens}  {cpu_model()}")
    print(f"{'streams':>7} {'mode':<14} {'tok/s':>8} {'x plain':>8} {'cpu ms/tok':>11} {'x plain':>8}")
    for row in rows:
        base = next(r for r in rows if r.streams == row.streams and r.mode == "plain")
        print(
            f"{row.streams:>7} {row.mode:<14} {row.tokens_per_s:>8.1f} "
            f"{row.tokens_per_s / base.tokens_per_s:>8.3f} {row.cpu_ms_per_token:>11.2f} "
            f"{row.cpu_ms_per_token / base.cpu_ms_per_token:>8.3f}"
        )
    print(f"\noutput processing alone, replayed (us per token; {args.long or args.tokens}-token replies):")
    print(f"{'mode':<14} {'first 100':>10} {'whole reply':>12}")
    for mode in MODES:
        first, whole = processing_cost(llamas[MODES[mode][0]], mode, args.long or args.tokens, bias)
        print(f"{mode:<14} {first:>10.1f} {whole:>12.1f}")
    if args.long:
        ceiling = _depth_ratio(args.model, args.threads, args.long // 2)
        if ceiling is not None:
            print(
                f"llama-bench: generation at depth {args.long // 2} (the long reply's mean context) runs at "
                f"{ceiling:.3f}x its rate at depth 0: the slowdown llama.cpp itself has"
            )
    for i in range(0, len(longs), 2):
        short, long = longs[i], longs[i + 1]
        print(
            f"{long.mode}: {long.tokens}-token reply {long.tokens_per_s:.1f} tok/s, 100-token reply "
            f"{short.tokens_per_s:.1f} tok/s: {long.tokens_per_s / short.tokens_per_s:.3f}x"
        )
    if args.json is not None:
        path = Path(
            args.json or Path(__file__).parent / "results" / f"stream-overhead-{int(time.time())}.json"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rows": [asdict(r) for r in rows], "long": [asdict(r) for r in longs]}))
        print(f"written to {path}")
    for llama in llamas.values():
        llama.close()


def processing_cost(llama: Any, mode: str, tokens: int, bias: dict[int, float]) -> tuple[float, float]:
    """Output processing alone, replayed: microseconds per token to turn a ``tokens``-token reply of
    ``mode`` into events and OpenAI chunks (parser, events, shaper), over its first 100 tokens and
    over all of it.  The reply is generated once; the replay runs without the model, so the figure
    is free of decode noise."""
    from llamacpp_native.api.chunk_shapers import ChatShaper
    from llamacpp_native.engine.output import ChatOutput, ReplyParser
    from llamacpp_native.engine.types import Chunk

    _qwen, grammar, tool = MODES[mode]
    messages = [{"role": "user", "content": "Write a long story."}]
    rendered = llama.render_chat(messages, tools=[TOOL] if tool else None)
    request = llama.chat_request(
        rendered, grammar=grammar, max_tokens=tokens, logit_bias=bias, temperature=0.0
    )
    ids = llama.engine.generate(request).tokens
    pieces = [llama.detokenize([t]).decode("utf-8", "replace") for t in ids]
    chunks = [Chunk(p, [t]) for p, t in zip(pieces, ids, strict=True)]
    chunks.append(Chunk("", [], None, "length", len(request.prompt_tokens), len(ids)))

    def replay(upto: int) -> float:
        output = ChatOutput(ReplyParser(rendered.parser_params) if rendered.needs_parser else None)
        shaper = ChatShaper("bench")
        started = time.perf_counter()
        for chunk in chunks[:upto] + chunks[-1:]:
            shaper.feed(output.feed(chunk))
        return 1e6 * (time.perf_counter() - started) / (upto + 1)

    return min(replay(100) for _ in range(5)), min(replay(len(ids)) for _ in range(3))


def _depth_ratio(model: str, threads: int, depth: int) -> float | None:
    """llama-bench's generation rate at ``depth`` tokens of context over its rate at 0 (None if unbuilt)."""
    import reference

    try:
        tool = reference.native_tools(build=False, names=("llama-bench",))["llama-bench"]
    except reference.ReferenceError:
        return None
    command = [str(tool), "-m", model, "-p", "0", "-n", "64", "-d", f"0,{depth}", "-t", str(threads)]
    out = subprocess.run([*command, "-fa", "1", "-o", "json"], capture_output=True, text=True, timeout=600)
    rates = {row["n_depth"]: row["avg_ts"] for row in json.loads(out.stdout)}
    return float(rates[depth] / rates[0])


def _pinned_templates() -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "build_tools"))
    from fetch_llama_cpp import fetch

    return fetch() / "models" / "templates"


if __name__ == "__main__":
    main()
