"""Stand in for ``llama-server``: read its command line, start our server with the same meaning.

llama.cpp's server test suite starts the binary named by ``LLAMA_SERVER_BIN_PATH`` with
llama-server's flags. This script takes those flags, translates each one to
``python -m llamacpp_integrations.server``'s, and replaces itself with our server (same
pid, so the suite's ``terminate()`` reaches it).

Each flag falls in one of three groups:

* translated: the same setting under our name (``--ctx-size`` -> ``--n_ctx``, ...);
* ignored: a flag whose behaviour ours already has or that changes nothing a client sees
  (``--embedding``: our embedding routes are always on; ``--cont-batching``; ``--no-ui``; ...).
  Each is printed to stderr, so a test log shows what was dropped;
* refused: a feature we do not have (``--lora``, EAGLE-3 or MTP drafting, router
  mode, MCP, built-in tools, ...). The script prints why and exits with status 2, so the
  test that asked for it fails, honestly, at start.

``--dry-run`` prints the translated command instead of running it.
"""

from __future__ import annotations

import os
import sys

# llama-server flag -> our flag, for flags that take one value with the same meaning.
VALUED = {
    "--host": "--host",
    "--port": "--port",
    "-m": "--model",
    "--model": "--model",
    "-a": "--model_alias",
    "--alias": "--model_alias",
    "--tags": "--model_tags",
    "-c": "--n_ctx",
    "--ctx-size": "--n_ctx",
    "-np": "--n_parallel",
    "--parallel": "--n_parallel",
    "-b": "--n_batch",
    "--batch-size": "--n_batch",
    "-t": "--n_threads",
    "--threads": "--n_threads",
    "-ngl": "--n_gpu_layers",
    "--gpu-layers": "--n_gpu_layers",
    "--n-gpu-layers": "--n_gpu_layers",
    "-s": "--seed",
    "--seed": "--seed",
    "--api-key": "--api_key",
    "-ctk": "--type_k",
    "--cache-type-k": "--type_k",
    "-ctv": "--type_v",
    "--cache-type-v": "--type_v",
    "--chat-template-file": "--chat_template_file",
    "--chat-template": "--chat_template",
    "--media-path": "--media_path",
    "--cors-origins": "--cors_origins",
    "--mmproj": "--mmproj",
    "--rpc": "--rpc",
    "-ts": "--tensor_split",
    "--tensor-split": "--tensor_split",
    "-mg": "--main_gpu",
    "--main-gpu": "--main_gpu",
    "-sm": "--split_mode",
    "--split-mode": "--split_mode",
    "--temp": "--temp",
    "-n": "--n_predict",
    "--n-predict": "--n_predict",
    "--pooling": "--pooling",
    "-rea": "--reasoning",
    "--reasoning": "--reasoning",
    "-md": "--model_draft",
    "--model-draft": "--model_draft",
    "--spec-draft-model": "--model_draft",
    "--spec-draft-n-max": "--draft_max",
    "--draft-max": "--draft_max",
    "--draft": "--draft_max",
}

# Flags without a value that ours matches already (always on, or nothing to do).
IGNORED_SWITCHES = {
    "--embedding": "the embedding routes are always on",
    "--embeddings": "the embedding routes are always on",
    "--cont-batching": "continuous batching is always on",
    "-cb": "continuous batching is always on",
    "--jinja": "chat templates are always rendered with llama.cpp's Jinja engine",
    "--no-jinja": "chat templates are always rendered with llama.cpp's Jinja engine",
    "--no-ui": "there is no web UI",
    "--offline": "nothing is ever downloaded",
    "--no-mmproj": "no projector unless --mmproj is given",
    "--swa-full": "KV cache sizing detail; nothing a client sees",
    "--no-cache-idle-slots": "turns off moving idle slots to the host-memory prompt cache, which ours lacks",
}

# Endpoints llama-server serves only when asked: name -> (flag on, flag off, llama-server's default,
# our switch, which is on by default).
ENDPOINT_SWITCHES = {
    "metrics": ("--metrics", None, False, "--metrics_endpoint"),
    "slots": ("--slots", "--no-slots", True, "--slots_endpoint"),
}

# Flags with one value that are dropped, with the reason.
IGNORED_VALUED = {
    "-ub": "the micro-batch size is llama.cpp's default",
    "--ubatch-size": "the micro-batch size is llama.cpp's default",
    "--spec-draft-n-min": "ours guesses whenever it finds a guess; there is no minimum",
    "--draft-min": "ours guesses whenever it finds a guess; there is no minimum",
    "-ngld": "the draft model runs on the CPU here",
    "--spec-draft-ngl": "the draft model runs on the CPU here",
}

# llama-server's --spec-type values -> ours.
SPEC_TYPES = {"none": "none", "ngram-simple": "ngram", "draft-simple": "draft"}

# Features we do not have: the test that needs one fails at start, with this reason.
REFUSED = {
    "--lora": "LoRA adapters at start (the server has no --lora)",
    "--lora-scaled": "LoRA adapters at start (the server has no --lora)",
    "--spec-synth-len": "synthetic draft acceptance (benchmarking only)",
    "--spec-synth-rates": "synthetic draft acceptance (benchmarking only)",
    "--slot-save-path": "saving and restoring slots",
    "--grp-attn-n": "group attention (self-extend)",
    "--grp-attn-w": "group attention (self-extend)",
    "--context-shift": "context shift",
    "--models-dir": "router mode (out of scope)",
    "--models-max": "router mode (out of scope)",
    "--models-preset": "router mode (out of scope)",
    "--no-models-autoload": "router mode (out of scope)",
    "--tools": "built-in tools (out of scope)",
    "--tools-runtime": "built-in tools (out of scope)",
    "--mcp-servers-config": "MCP (out of scope)",
    "--mcp-servers-json": "MCP (out of scope)",
    "--ui-mcp-proxy": "the CORS proxy (out of scope)",
    "--cache-ram": "the host-memory prompt cache",
    "--backend_sampling": "sampling on the backend",
    "--hf-repo": "downloading models (nothing is downloaded)",
    "-hf": "downloading models (nothing is downloaded)",
    "--hf-file": "downloading models (nothing is downloaded)",
    "-hff": "downloading models (nothing is downloaded)",
    "--model-url": "downloading models (nothing is downloaded)",
    "-mu": "downloading models (nothing is downloaded)",
    "--mmproj-url": "downloading a projector (nothing is downloaded)",
}

# llama-server's --reasoning-format values -> ours (auto: reasoning apart; none: left in the text).
REASONING_FORMATS = {"auto": "auto", "deepseek": "auto", "none": "none"}


class Refused(Exception):
    """A flag asks for something our server does not do."""


def _note(message: str) -> None:
    print(f"fake_llama_server: {message}", file=sys.stderr, flush=True)


def _flash_attn(value: str) -> list[str]:
    lowered = value.lower()
    if lowered in ("on", "1", "true", "enabled"):
        return ["--flash_attn", "true"]
    if lowered in ("off", "0", "false", "disabled"):
        return ["--flash_attn", "false"]
    return []  # auto: llama.cpp decides, our default


def _slot_context(given: dict[str, str], unified: bool, per_slot: str | None) -> list[str]:
    """llama-server's per-slot context, as our ``--n_ctx_per_slot`` (and ``--n_ctx``).

    With ``-np`` and without ``--kv-unified``, each slot gets ``-c / -np`` tokens (with ``-c``
    given; without it llama-server's context is the model's, which ours does not follow).
    ``--kv-unified-per-slot N`` caps each slot at N, and without ``-c`` sizes the cache
    ``n_parallel * N`` (``-np`` defaults to 4 there, as ours does).
    """
    try:
        n_ctx = int(given["--n_ctx"]) if "--n_ctx" in given else None
        n_parallel = int(given["--n_parallel"]) if "--n_parallel" in given else None
        cap = int(per_slot) if per_slot is not None else 0
    except ValueError as error:
        raise Refused(f"a context size or slot count that is not a number: {error}") from None
    extra: list[str] = []
    if cap > 0 and n_ctx is None:
        n_ctx = (n_parallel or 4) * cap
        extra += ["--n_ctx", str(n_ctx)]
    if n_ctx is not None and n_parallel is not None and n_parallel > 0 and not unified:
        cap = min(cap, n_ctx // n_parallel) if cap > 0 else n_ctx // n_parallel
    return extra + (["--n_ctx_per_slot", str(cap)] if cap > 0 else [])


def translate(argv: list[str]) -> list[str]:
    """llama-server's arguments -> ours; raises ``Refused`` for a feature we lack."""
    ours: list[str] = []
    given: dict[str, str] = {}  # our valued flags as given, for the per-slot context
    unified = False
    per_slot: str | None = None
    endpoints = {name: default for name, (_, _, default, _) in ENDPOINT_SWITCHES.items()}
    args = list(argv)
    while args:
        flag = args.pop(0)
        value = None
        if "=" in flag and flag.startswith("--"):
            flag, value = flag.split("=", 1)

        def take(flag: str = flag, value: str | None = value) -> str:
            if value is not None:
                return value
            if not args:
                raise Refused(f"{flag} needs a value")
            return args.pop(0)

        switched = [name for name, (on, off, _, _) in ENDPOINT_SWITCHES.items() if flag in (on, off)]
        if switched:
            endpoints[switched[0]] = flag == ENDPOINT_SWITCHES[switched[0]][0]
        elif flag in VALUED:
            given[VALUED[flag]] = take()
            ours += [VALUED[flag], given[VALUED[flag]]]
        elif flag in ("-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified"):
            unified = "no-" not in flag  # ours always shares one KV cache; this decides the per-slot cap
        elif flag == "--kv-unified-per-slot":
            per_slot = take()
        elif flag == "--sleep-idle-seconds":
            seconds = take()
            if not seconds.lstrip("-").isdigit():
                raise Refused(f"--sleep-idle-seconds {seconds!r}: not a whole number")
            if int(seconds) >= 0:  # -1: never sleep, llama-server's default and ours
                ours += ["--sleep_idle_seconds", seconds]
        elif flag in IGNORED_SWITCHES:
            _note(f"ignoring {flag}: {IGNORED_SWITCHES[flag]}")
        elif flag in IGNORED_VALUED:
            _note(f"ignoring {flag} {take()}: {IGNORED_VALUED[flag]}")
        elif flag in ("--reranking", "--rerank"):
            ours += ["--pooling", "rank"]  # what llama-server's --reranking sets
        elif flag in ("-fa", "--flash-attn"):
            ours += _flash_attn(take())
        elif flag == "--reasoning-format":
            given = take()
            if given not in REASONING_FORMATS:
                raise Refused(f"--reasoning-format {given!r}")
            ours += ["--reasoning_format", REASONING_FORMATS[given]]
        elif flag == "--spec-type":
            given = take()
            if given not in SPEC_TYPES:
                raise Refused(f"--spec-type {given!r}: ours has {sorted(SPEC_TYPES)}")
            ours += ["--spec_type", SPEC_TYPES[given]]
        elif flag in ("-v", "--verbose"):
            ours.append("--verbose")
        elif flag in REFUSED:
            raise Refused(f"{flag}: {REFUSED[flag]}")
        else:
            raise Refused(f"{flag}: a flag this wrapper does not know")
    if "--model" not in ours:
        raise Refused("no --model: llama-server's router mode (out of scope)")
    for name, served in endpoints.items():
        if not served:  # ours serves it unless told not to
            ours += [ENDPOINT_SWITCHES[name][3], "false"]
    return ours + _slot_context(given, unified, per_slot)


def main(argv: list[str]) -> int:
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    try:
        ours = translate(argv)
    except Refused as refusal:
        _note(f"unsupported by llamacpp_integrations.server: {refusal}; exiting")
        return 2
    command = [sys.executable, "-m", "llamacpp_integrations.server", *ours]
    _note("running " + " ".join(command))
    if dry_run:
        print(" ".join(command))
        return 0
    os.execv(sys.executable, command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
