"""Work on the GPU: embeddings, an image through a projector, many streams, the server over HTTP."""

from __future__ import annotations

import base64
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llamacpp_native import Llama
from mtmd_support import TOKENS_PER_IMAGE, noise_png, write_test_projector

TEXTS = ["The quick brown fox jumps over the lazy dog.", "GPUs", "Ein kurzer deutscher Satz zum Vergleich."]
STREAM_TOKENS = 24


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_on_the_gpu_match_the_cpu(gpu_model: Path, model_layers: int) -> None:
    with Llama(gpu_model, embedding=True, n_gpu_layers=-1, n_ctx=512, n_parallel=1) as gpu:
        assert gpu.offload_report().layers == {"CUDA0": model_layers + 1}
        on_gpu = gpu.embed(TEXTS)
    with Llama(gpu_model, embedding=True, n_gpu_layers=0, n_ctx=512, n_parallel=1) as cpu:
        on_cpu = cpu.embed(TEXTS)
    assert len(on_gpu) == len(on_cpu) == len(TEXTS)
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert len(g) == len(c)
        assert all(math.isfinite(x) for x in g)
        norm = math.sqrt(sum(x * x for x in c))
        error = math.sqrt(sum((x - y) ** 2 for x, y in zip(g, c, strict=True))) / norm
        assert _cosine(g, c) > 0.999, f"cosine {_cosine(g, c):.5f}"
        assert error < 3e-2, f"relative error {error:.2e}"  # F16 weights, cuBLAS vs CPU kernels


def test_an_image_through_a_tiny_projector_on_the_gpu(
    gpu_model: Path, model_embd: int, tmp_path: Path
) -> None:
    projector = write_test_projector(tmp_path / "mmproj-tiny.gguf", n_embd_out=model_embd)
    url = "data:image/png;base64," + base64.b64encode(noise_png(3)).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]
    with Llama(gpu_model, mmproj_path=projector, n_gpu_layers=-1, n_ctx=1024, n_parallel=2) as llama:
        eos = llama.token_eos()
        result = llama.create_chat_completion(
            messages, max_tokens=6, temperature=0.0, logit_bias={eos: -math.inf}
        )
        assert isinstance(result, dict)
        assert result["usage"]["prompt_tokens"] > TOKENS_PER_IMAGE
        assert result["usage"]["completion_tokens"] == 6
        text_only = llama.create_chat_completion(
            [{"role": "user", "content": "What is in this picture?"}], max_tokens=1, temperature=0.0
        )
        assert isinstance(text_only, dict)
        assert result["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"] >= TOKENS_PER_IMAGE


@pytest.mark.parametrize("streams", [8, 32])
def test_concurrent_streams_each_get_every_token(gpu_model: Path, streams: int) -> None:
    """``streams`` threads stream at once through one engine (continuous batching on the GPU)."""
    with Llama(gpu_model, n_gpu_layers=-1, n_parallel=streams, n_ctx=streams * 128, seed=5) as llama:
        bias = {llama.token_eos(): -math.inf}
        counts: list[int] = [0] * streams
        finishes: list[str | None] = [None] * streams
        errors: list[BaseException] = []
        barrier = threading.Barrier(streams)

        def client(index: int) -> None:
            try:
                barrier.wait()
                chunks = llama.create_completion(
                    f"Story {index}:", max_tokens=STREAM_TOKENS, stream=True, seed=index, logit_bias=bias
                )
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    finishes[index] = choice.get("finish_reason") or finishes[index]
                    usage = chunk.get("usage")
                    if usage:
                        counts[index] = usage["completion_tokens"]
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors[0]
        assert finishes == ["length"] * streams

        results = llama.create_completions(
            [f"Parallel {i}:" for i in range(streams)], max_tokens=STREAM_TOKENS, logit_bias=bias
        )
        assert [r.completion_tokens for r in results] == [STREAM_TOKENS] * streams
        assert {r.finish_reason for r in results} == {"length"}
        if any(counts):  # where the stream reports usage, it counts every token
            assert counts == [STREAM_TOKENS] * streams


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def gpu_server(gpu_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our server on a free loopback port, 8 slots, every layer on the GPU."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMACPP_")}
    command = [
        sys.executable, "-m", "llamacpp_integrations.server", "--model", str(gpu_model),
        "--host", "127.0.0.1", "--port", str(port), "--n_parallel", "8", "--n_ctx", str(8 * 256),
        "--n_gpu_layers", "-1",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready in 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_server_serves_8_clients_at_once_on_the_gpu(gpu_server: str) -> None:
    results: list[dict[str, Any] | BaseException] = [{}] * 8
    barrier = threading.Barrier(8)

    def client(index: int) -> None:
        try:
            barrier.wait()
            body = {"prompt": f"Client {index}:", "max_tokens": 16, "ignore_eos": True, "seed": index}
            response = httpx.post(gpu_server + "/v1/completions", json=body, timeout=120)
            response.raise_for_status()
            results[index] = response.json()
        except BaseException as error:
            results[index] = error

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    for result in results:
        assert isinstance(result, dict), result
        assert result["usage"]["completion_tokens"] == 16
        assert result["choices"][0]["finish_reason"] == "length"
