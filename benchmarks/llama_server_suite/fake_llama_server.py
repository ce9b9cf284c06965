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
    "--metrics": "/metrics is always on",
    "--slots": "/slots is always on",
    "--no-slots": "/slots is always on (cannot be turned off)",
    "--cont-batching": "continuous batching is always on",
    "-cb": "continuous batching is always on",
    "--jinja": "chat templates are always rendered with llama.cpp's Jinja engine",
    "--no-jinja": "chat templates are always rendered with llama.cpp's Jinja engine",
    "--kv-unified": "all slots share one KV cache already",
    "--no-ui": "there is no web UI",
    "--offline": "nothing is ever downloaded",
    "--no-mmproj": "no projector unless --mmproj is given",
    "--swa-full": "KV cache sizing detail; nothing a client sees",
}

# Flags with one value that are dropped, with the reason.
IGNORED_VALUED = {
    "--temp": "the server-wide default temperature is not settable; requests set their own",
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
    "--tags": "model tags",
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
    "--sleep-idle-seconds": "sleeping when idle",
    "--cache-ram": "the host-memory prompt cache",
    "--no-cache-idle-slots": "the host-memory prompt cache",
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


def translate(argv: list[str]) -> list[str]:
    """llama-server's arguments -> ours; raises ``Refused`` for a feature we lack."""
    ours: list[str] = []
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

        if flag in VALUED:
            ours += [VALUED[flag], take()]
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
    return ours


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
