"""One benchmark round for one Python engine, run in its own process by ``bench.py``.

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
import time
from collections.abc import Iterable
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
def _langchain_llm(engine: str, config: dict[str, Any]) -> Any:
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

    return OurLlamaCpp(**settings, n_ubatch=config["n_ubatch"], flash_attn=config["flash_attn"])


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


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    engine = config["engine"]
    if engine in ("ours", "peer"):
        result = run_llama(engine, config)
    elif engine in ("langchain-ours", "langchain-peer"):
        result = run_langchain(engine, config)
    else:
        raise SystemExit(f"unknown engine {engine!r}")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
