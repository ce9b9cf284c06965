"""One benchmark round for one Python engine, run in its own process by ``bench.py``
(and by ``concurrency.py``: task ``concurrency``, many client threads at once).

Usage (internal): ``python _worker.py CONFIG_JSON``; prints one JSON object on stdout.

The engines share llama-cpp-python's call shapes, so one measuring routine serves
ours (``llamacpp_native.Llama``) and the peer (``llama_cpp.Llama``): only the class
differs.  The LangChain engines wrap those two.  Each process imports only the
engine it measures, so the two bindings never share an interpreter.

Generation is timed around the whole streaming call, with the prompt already in
the KV cache (both bindings then re-decode only its last token): the span holds
``n`` samples and ``n`` decodes in either binding, the same work as ``n`` times
the per-token eval + sampling time that ``llama-completion`` reports.
"""

from __future__ import annotations

import cProfile
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

NEG_INF = -math.inf


def _sampling(config: dict[str, Any], suppress_eog: bool = True) -> dict[str, Any]:
    """Completion keyword arguments shared by every engine (EOG suppressed by logit bias)."""
    if not suppress_eog:
        return dict(config["sampling"])
    return dict(config["sampling"], logit_bias={int(t): NEG_INF for t in config["eog_tokens"]})


def _drain(chunks: Iterable[Any]) -> tuple[int, Any]:
    """Consume a stream; return (chunk count, last chunk)."""
    count, last = 0, None
    for chunk in chunks:
        count += 1
        last = chunk
    return count, last


def _finish(chunk: Any) -> str | None:
    return chunk["choices"][0].get("finish_reason") if chunk else None


# -- engines with llama-cpp-python's Llama shape ---------------------------------------------------
def _load_llama(engine: str, config: dict[str, Any], n_parallel: int, n_ctx: int) -> Any:
    common = dict(
        n_ctx=n_ctx,
        n_batch=config["n_batch"],
        n_ubatch=config["n_ubatch"],
        n_threads=config["threads"],
        n_threads_batch=config["threads"],
        flash_attn=config["flash_attn"],
        seed=config["seed"],
        verbose=False,
    )
    if engine == "ours":
        from llamacpp_native import Llama

        return Llama(config["model"], n_parallel=n_parallel, **common)
    from llama_cpp import Llama as PeerLlama

    return PeerLlama(config["model"], **common)


def _measure_pp(llm: Any, config: dict[str, Any]) -> dict[str, float]:
    """Prompt processing: a fresh prompt of random tokens, one sampled token, wall clock."""
    tokens = config["pp_tokens"]
    kwargs = _sampling(config)
    started = time.perf_counter()
    result = llm.create_completion(tokens, max_tokens=1, **kwargs)
    seconds = time.perf_counter() - started
    if result["usage"]["prompt_tokens"] != len(tokens):
        raise RuntimeError(f"prompt of {len(tokens)} tokens reported as {result['usage']}")
    return {"tokens": len(tokens), "seconds": seconds, "tps": len(tokens) / seconds}


def _prime(llm: Any, config: dict[str, Any]) -> None:
    """Put the generation prompt into the KV cache (see the module docstring).

    Two tokens, so that both bindings hold prompt + one generated token and the next
    call re-decodes exactly one prompt token (after a one-token call llama-cpp-python
    would sample straight from the stale logits instead).
    """
    _drain(llm.create_completion(config["tg_prompt"], max_tokens=2, stream=True, **_sampling(config)))


def _decode_ms(llm: Any) -> float:
    """Milliseconds this context has spent in ``llama_decode`` (llama.cpp's own perf counters)."""
    if hasattr(llm, "engine"):  # ours
        perf = llm.engine.context.perf()
        return float(perf["prompt_ms"] + perf["eval_ms"])
    import llama_cpp

    data = llama_cpp.llama_perf_context(llm.ctx)
    return float(data.t_p_eval_ms + data.t_eval_ms)


def _timed_generation(llm: Any, config: dict[str, Any], suppress_eog: bool) -> tuple[int, Any, float, float]:
    """Prime, then stream one generation: (chunks, last chunk, seconds, ms spent in llama_decode)."""
    _prime(llm, config)
    kwargs = _sampling(config, suppress_eog)
    decode_before = _decode_ms(llm)
    started = time.perf_counter()
    count, last = _drain(
        llm.create_completion(config["tg_prompt"], max_tokens=config["tg"], stream=True, **kwargs)
    )
    seconds = time.perf_counter() - started
    return count, last, seconds, _decode_ms(llm) - decode_before


def _measure_tg(llm: Any, config: dict[str, Any]) -> dict[str, float]:
    """Generation: ``tg`` sampled tokens with EOG suppressed, streamed.

    ``outside_ms`` is the wall time per token not spent in ``llama_decode``: sampling
    plus the binding's own overhead, and far less sensitive to machine load than the rate.
    """
    n = config["tg"]
    count, last, seconds, decode_ms = _timed_generation(llm, config, suppress_eog=True)
    if _finish(last) != "length":
        raise RuntimeError(f"generation ended with {_finish(last)!r}, not 'length' (EOG suppression failed?)")
    outside = (seconds * 1000 - decode_ms) / n
    return {"tokens": n, "chunks": count, "seconds": seconds, "tps": n / seconds, "outside_ms": outside}


def _measure_tg_unbiased(llm: Any, config: dict[str, Any]) -> dict[str, float]:
    """Generation without the logit bias (llama-cpp-python applies one in Python, per token).

    Generation may then end early.  With the same seed and sampler chain both bindings
    draw the same tokens; the rate counts streamed chunks (one per token, less the final
    one, bar held-back partial UTF-8), the same for both.
    """
    count, _last, seconds, decode_ms = _timed_generation(llm, config, suppress_eog=False)
    tokens = count - 1
    if tokens < 16:
        raise RuntimeError(f"unbiased generation stopped after {tokens} tokens; too short to time")
    outside = (seconds * 1000 - decode_ms) / tokens
    return {
        "tokens": tokens,
        "chunks": count,
        "seconds": seconds,
        "tps": tokens / seconds,
        "outside_ms": outside,
    }


def _measure_parallel_ours(llm: Any, config: dict[str, Any]) -> dict[str, float]:
    """Eight prompts as parallel sequences in shared batches (``create_completions``)."""
    prompts, n = config["parallel_prompts"], config["parallel_tg"]
    first_seen: dict[int, float] = {}

    def on_chunk(index: int, _chunk: Any) -> None:
        first_seen.setdefault(index, time.perf_counter())

    started = time.perf_counter()
    results = llm.create_completions(prompts, on_chunk=on_chunk, max_tokens=n, **_sampling(config))
    ended = time.perf_counter()
    generated = sum(r.completion_tokens for r in results)
    if generated != n * len(prompts):
        raise RuntimeError(f"parallel run generated {generated} tokens, expected {n * len(prompts)}")
    return _parallel_figures(prompts, n, started, max(first_seen.values()), ended)


def _measure_parallel_peer(llm: Any, config: dict[str, Any]) -> dict[str, float]:
    """The peer has no multi-sequence API: the same prompts, one after another."""
    prompts, n = config["parallel_prompts"], config["parallel_tg"]
    kwargs = _sampling(config)
    started = time.perf_counter()
    to_first = 0.0
    for prompt in prompts:
        begun = time.perf_counter()
        chunks = iter(llm.create_completion(prompt, max_tokens=n, stream=True, **kwargs))
        next(chunks)
        to_first += time.perf_counter() - begun
        _count, last = _drain(chunks)
        if _finish(last) != "length":
            raise RuntimeError(f"generation ended with {_finish(last)!r}, not 'length'")
    ended = time.perf_counter()
    return _parallel_figures(prompts, n, started, started + to_first, ended)


def _parallel_figures(
    prompts: list[list[int]], n: int, started: float, gen_started: float, ended: float
) -> dict[str, float]:
    n_prompt = sum(map(len, prompts))
    total = n_prompt + n * len(prompts)
    return {
        "tokens": total,
        "seconds": ended - started,
        "tps": total / (ended - started),  # like llama-batched-bench's S t/s
        "gen_tps": (n - 1) * len(prompts) / (ended - gen_started),  # like its S_TG t/s
    }


def _warm_up(llm: Any, config: dict[str, Any]) -> None:
    kwargs = _sampling(config)
    _drain(llm.create_completion(config["pp_tokens"][:32][::-1], max_tokens=8, stream=True, **kwargs))


def run_llama(engine: str, config: dict[str, Any]) -> dict[str, Any]:
    """Measure pp / tg / parallel with ours or the peer."""
    out: dict[str, Any] = {}
    tasks = config["tasks"]
    if {"pp", "tg", "tg_unbiased"} & set(tasks):
        started = time.perf_counter()
        llm = _load_llama(engine, config, n_parallel=1, n_ctx=config["n_ctx"])
        out["load_s"] = time.perf_counter() - started
        _warm_up(llm, config)
        if "pp" in tasks:
            # one unmeasured prompt of the same size first, as llama-bench warms up: a GPU
            # loads the kernels of a large batch (cuBLAS, MMQ) on their first use
            _measure_pp(llm, dict(config, pp_tokens=config["pp_tokens"][::-1]))
            out["pp"] = _measure_pp(llm, config)
        if "tg" in tasks:
            profile_to = config.get("profile")
            if profile_to and engine == "ours":
                profiler = cProfile.Profile()
                out["tg"] = profiler.runcall(_measure_tg, llm, config)
                profiler.dump_stats(profile_to)
            else:
                out["tg"] = _measure_tg(llm, config)
        if "tg_unbiased" in tasks:
            out["tg_unbiased"] = _measure_tg_unbiased(llm, config)
        _close(llm)
    if "parallel" in tasks:
        prompts = config["parallel_prompts"]
        if engine == "ours":
            n_ctx = len(prompts) * (len(prompts[0]) + config["parallel_tg"])
            llm = _load_llama(engine, config, n_parallel=len(prompts), n_ctx=n_ctx)
            _warm_up(llm, config)
            out["parallel"] = _measure_parallel_ours(llm, config)
        else:
            llm = _load_llama(engine, config, n_parallel=1, n_ctx=config["n_ctx"])
            _warm_up(llm, config)
            out["parallel"] = _measure_parallel_peer(llm, config)
        _close(llm)
    return out


def _close(llm: Any) -> None:
    close = getattr(llm, "close", None)
    if close is not None:
        close()


# -- LangChain -------------------------------------------------------------------------------------
def _langchain_llm(engine: str, config: dict[str, Any], load: dict[str, Any] | None = None) -> Any:
    settings = dict(
        model_path=config["model"],
        n_ctx=config["n_ctx"],
        n_batch=config["n_batch"],
        n_threads=config["threads"],
        max_tokens=config["tg"],
        temperature=config["sampling"]["temperature"],
        top_p=config["sampling"]["top_p"],
        top_k=config["sampling"]["top_k"],
        repeat_penalty=config["sampling"]["repeat_penalty"],
        seed=config["seed"],
        verbose=False,
    )
    if engine == "langchain-peer":
        from langchain_community.llms import LlamaCpp

        # Its defaults differ from the other engines' (n_batch=8, a fixed rope base of 10000):
        # pass the same settings explicitly, and the rest through model_kwargs.
        return LlamaCpp(
            **settings,
            rope_freq_base=0.0,
            rope_freq_scale=0.0,
            model_kwargs={
                "n_ubatch": config["n_ubatch"],
                "n_threads_batch": config["threads"],
                "flash_attn": config["flash_attn"],
            },
        )
    from llamacpp_integrations.langchain import LlamaCpp as OurLlamaCpp

    return OurLlamaCpp(
        **settings, n_ubatch=config["n_ubatch"], flash_attn=config["flash_attn"], model_kwargs=load or {}
    )


def run_langchain(engine: str, config: dict[str, Any]) -> dict[str, Any]:
    """Generation through ``LlamaCpp.stream`` (LangChain's LLM interface), timed like ``_measure_tg``."""
    out: dict[str, Any] = {}
    started = time.perf_counter()
    llm = _langchain_llm(engine, config)
    extra = {
        "min_p": config["sampling"]["min_p"],
        "logit_bias": {int(t): NEG_INF for t in config["eog_tokens"]},
    }
    _drain(llm.stream(config["tg_prompt"], max_tokens=8, **extra))  # warm-up (and a lazy model load)
    out["load_s"] = time.perf_counter() - started
    _drain(llm.stream(config["tg_prompt"], max_tokens=2, **extra))  # prompt into the KV cache (see _prime)
    n = config["tg"]
    started = time.perf_counter()
    count, _ = _drain(llm.stream(config["tg_prompt"], **extra))
    seconds = time.perf_counter() - started
    out["tg"] = {"tokens": n, "chunks": count, "seconds": seconds, "tps": n / seconds}
    return out


# -- many clients at once (concurrency.py) ---------------------------------------------------------
ClientStream = Callable[[int], Iterator[Any]]
"""``stream(i)``: client ``i``'s request, as an iterator with one item per streamed token
(or a few, when text is held back); it raises if the request did not generate what was asked."""


def drive_clients(n: int, stream: ClientStream) -> list[dict[str, float]]:
    """Run ``stream(0..n-1)`` from ``n`` threads released together; times per client.

    Each client notes when it starts (just after the shared barrier), when its first
    item arrives and when its stream ends, all on one ``perf_counter`` clock.  An error
    in any client is raised here once every thread has finished.
    """
    barrier = threading.Barrier(n)
    records: list[dict[str, float]] = [{} for _ in range(n)]
    errors: list[BaseException] = []

    def client(index: int) -> None:
        record = records[index]
        try:
            barrier.wait()
            record["start"] = time.perf_counter()
            items = 0
            for _item in stream(index):
                if not items:
                    record["first"] = time.perf_counter()
                items += 1
            record["end"] = time.perf_counter()
            record["items"] = items
        except BaseException as error:  # reported by the caller, never lost in a thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} clients failed: {(real or errors)[0]!r}")
    return records


def client_figures(records: list[dict[str, float]], tokens_each: int) -> dict[str, Any]:
    """Aggregate tokens/s (all tokens / first start to last end) and each client's time to first token."""
    started = min(r["start"] for r in records)
    wall = max(r["end"] for r in records) - started
    tokens = tokens_each * len(records)
    return {
        "clients": len(records),
        "tokens": tokens,
        "wall_s": wall,
        "tps": tokens / wall,
        "ttft_s": [r["first"] - r["start"] for r in records],
        "end_s": [r["end"] - started for r in records],
    }


def _expect_length(last: Any, what: str) -> None:
    if _finish(last) != "length":
        raise RuntimeError(f"{what} ended with {_finish(last)!r}, not 'length' (EOG suppression failed?)")


def run_concurrency(engine: str, config: dict[str, Any]) -> dict[str, Any]:
    """``clients`` concurrent streams of ``tokens`` tokens each, through one model object.

    ours: one ``Llama`` with ``n_parallel=clients`` (its engine batches the streams);
    peer: one ``llama_cpp.Llama``, which is not thread-safe, so each client holds a lock
    for its whole stream (the requests queue up, as they must for its users);
    langchain-ours: one ``LlamaCpp`` on an ours model with ``n_parallel=clients``.
    A warm-up round of short streams from every client comes first.
    """
    n, tokens = config["clients"], config["tokens"]
    prompts, seeds = config["prompts"], config["seeds"]
    kwargs = _sampling(config)
    started = time.perf_counter()
    if engine == "langchain-ours":
        llm = _langchain_llm(
            engine,
            dict(config, n_ctx=n * config["ctx_per_slot"], tg=tokens),
            load={"n_parallel": n, "n_threads_batch": config["threads"]},
        )
        per_call = {"min_p": kwargs.pop("min_p"), "logit_bias": kwargs["logit_bias"]}
        llm.llama  # noqa: B018 - load now, not inside the first client's timing

        def stream(index: int, prompt: str | None = None, max_tokens: int = tokens) -> Iterator[Any]:
            # LangChain's stream() yields text only; whether it generated every token is
            # checked in the warm-up below (same settings, finish reason from on_llm_end).
            text = prompt or prompts[index]
            yield from llm.stream(text, max_tokens=max_tokens, seed=seeds[index], **per_call)

    else:
        n_ctx = n * config["ctx_per_slot"] if engine == "ours" else config["ctx_per_slot"]
        llm = _load_llama(engine, config, n_parallel=n, n_ctx=n_ctx)
        lock = threading.Lock() if engine == "peer" else None

        def stream(index: int, prompt: str | None = None, max_tokens: int = tokens) -> Iterator[Any]:
            text = prompt or prompts[index]
            call = dict(kwargs, seed=seeds[index])
            if lock is None:
                last = None
                for chunk in llm.create_completion(text, max_tokens=max_tokens, stream=True, **call):
                    last = chunk
                    yield chunk
            else:
                with lock:  # one llama_cpp.Llama serves one request at a time
                    last = None
                    for chunk in llm.create_completion(text, max_tokens=max_tokens, stream=True, **call):
                        last = chunk
                        yield chunk
            _expect_length(last, f"client {index}'s stream")

    load_s = time.perf_counter() - started
    warm = config["warmup_tokens"]
    drive_clients(n, lambda i: stream(i, prompt=config["warmup_prompts"][i], max_tokens=warm))
    if engine == "langchain-ours":
        _check_langchain_length(llm, config["warmup_prompts"][0], warm, seeds[0], per_call)
    figures = client_figures(drive_clients(n, stream), tokens)
    _close(llm.llama if engine == "langchain-ours" else llm)
    return {"concurrency": dict(figures, load_s=load_s)}


def _check_langchain_length(
    llm: Any, prompt: str, max_tokens: int, seed: int, per_call: dict[str, Any]
) -> None:
    """One stream with a callback that sees LangChain's final generation: all ``max_tokens`` made?"""
    from langchain_core.callbacks import BaseCallbackHandler

    seen: dict[str, Any] = {}

    class Final(BaseCallbackHandler):
        def on_llm_end(self, response: Any, **_: Any) -> None:
            seen["info"] = response.generations[0][0].generation_info or {}

    _drain(llm.stream(prompt, max_tokens=max_tokens, seed=seed, config={"callbacks": [Final()]}, **per_call))
    info = seen.get("info", {})
    made = (info.get("token_usage") or {}).get("completion_tokens")
    if info.get("finish_reason") != "length" or made != max_tokens:
        raise RuntimeError(f"LangChain stream made {made} tokens, finish {info.get('finish_reason')!r}")


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    engine = config["engine"]
    if config.get("tasks") == ["concurrency"]:
        result = run_concurrency(engine, config)
    elif engine in ("ours", "peer"):
        result = run_llama(engine, config)
    elif engine in ("langchain-ours", "langchain-peer"):
        result = run_langchain(engine, config)
    else:
        raise SystemExit(f"unknown engine {engine!r}")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
