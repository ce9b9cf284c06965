"""Layers on the GPU: all of them, some of them, and device settings that cannot be met.

The offload report reads llama.cpp's own log of where each layer went; llama.cpp
counts the output layer as one more, so a model of ``n`` blocks has ``n + 1``.
With ``n_gpu_layers=k`` llama.cpp offloads the last ``k`` of them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from llamacpp_native import Llama

SMALL = {"n_ctx": 512, "n_parallel": 1, "seed": 1}


def generate(llama: Llama, tokens: int = 8) -> dict:
    """A greedy completion of exactly ``tokens`` tokens (the end token suppressed)."""
    result = llama.create_completion(
        "The quick brown fox", max_tokens=tokens, temperature=0.0, logit_bias={llama.token_eos(): -math.inf}
    )
    assert isinstance(result, dict)
    assert result["usage"]["completion_tokens"] == tokens
    assert result["choices"][0]["finish_reason"] == "length"
    return result


def test_full_offload_puts_every_layer_and_buffer_on_the_gpu(gpu_model: Path, model_layers: int) -> None:
    with Llama(gpu_model, n_gpu_layers=-1, **SMALL) as llama:
        report = llama.offload_report()
        print(report)
        assert report.layers == {"CUDA0": model_layers + 1}
        assert report.offloaded == (model_layers + 1, model_layers + 1)
        assert report.buffer_mib("model").get("CUDA0", 0) > 0
        assert report.buffer_mib("KV").get("CUDA0", 0) > 0
        assert report.buffer_mib("compute").get("CUDA0", 0) > 0
        assert llama.model.devices()[0].name == "CUDA0"
        assert llama.model.devices()[0].memory_total
        generate(llama)


@pytest.mark.parametrize("k", [1, 3])
def test_partial_offload_puts_k_layers_on_the_gpu(gpu_model: Path, model_layers: int, k: int) -> None:
    with Llama(gpu_model, n_gpu_layers=k, **SMALL) as llama:
        report = llama.offload_report()
        assert report.layers.get("CUDA0") == k
        assert report.layers.get("CPU") == model_layers + 1 - k
        assert report.offloaded == (k, model_layers + 1)
        assert report.layer_devices[-k:] == ["CUDA0"] * k  # the last k layers
        generate(llama)


def test_cpu_only_load_keeps_every_layer_on_the_cpu(gpu_model: Path, model_layers: int) -> None:
    with Llama(gpu_model, n_gpu_layers=0, **SMALL) as llama:
        assert llama.offload_report().layers == {"CPU": model_layers + 1}


def test_split_mode_none_on_main_gpu_zero(gpu_model: Path, model_layers: int) -> None:
    with Llama(gpu_model, n_gpu_layers=-1, split_mode="none", main_gpu=0, **SMALL) as llama:
        assert llama.offload_report().layers == {"CUDA0": model_layers + 1}


# A setting llama.cpp cannot meet may abort the process inside ggml's CUDA backend
# rather than fail the load, so each is tried in a child: a crash fails one test, not the run.
CHILD = """
import json, sys
from llamacpp_native import Llama
kwargs = json.loads(sys.argv[2])
try:
    Llama(sys.argv[1], **kwargs).close()
except Exception as error:
    print(f"{type(error).__name__}|{isinstance(error, ValueError)}|{error}")
    sys.exit(0)
print("loaded")
"""


def load_in_child(model: Path, **kwargs: object) -> str:
    """Load ``model`` with ``kwargs`` in a fresh interpreter: ``"Type|is ValueError|message"`` or "loaded"."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), json.dumps(dict(SMALL, **kwargs))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-8:])
        pytest.fail(f"the process died (exit {result.returncode}) instead of raising:\n{tail}")
    return result.stdout.strip().splitlines()[-1]


def assert_value_error(outcome: str, setting: str) -> None:
    assert outcome != "loaded", f"{setting}: the model loaded instead of raising ValueError"
    kind, is_value_error, message = outcome.split("|", 2)
    assert is_value_error == "True", f"{setting}: {kind} ({message}), not a ValueError"
    assert setting in message, f"the message does not name {setting}: {message}"


@pytest.mark.parametrize("split_mode", ["none", "row"])
def test_main_gpu_beyond_the_devices_is_a_value_error(
    gpu_model: Path, gpu_names: list[str], split_mode: str
) -> None:
    bad = len(gpu_names)  # one past the last device
    outcome = load_in_child(gpu_model, n_gpu_layers=-1, split_mode=split_mode, main_gpu=bad)
    assert_value_error(outcome, "main_gpu")
    assert str(bad) in outcome


@pytest.mark.parametrize(
    "split",
    [
        pytest.param([-1.0], id="negative"),
        pytest.param([0.0], id="all-zero"),
        pytest.param("too-many", id="more-devices-than-there-are"),
    ],
)
def test_bad_tensor_split_is_a_value_error(gpu_model: Path, gpu_names: list[str], split: object) -> None:
    shares = [1.0] * (len(gpu_names) + 1) if split == "too-many" else split
    assert_value_error(load_in_child(gpu_model, n_gpu_layers=-1, tensor_split=shares), "tensor_split")


def test_the_model_still_loads_after_a_refused_setting(gpu_model: Path, gpu_names: list[str]) -> None:
    """In one process: a load refused for its settings leaves nothing behind that stops the next."""
    with pytest.raises(Exception):  # noqa: B017 - which one is the test above's business
        Llama(gpu_model, n_gpu_layers=-1, split_mode="none", main_gpu=len(gpu_names), **SMALL)
    with Llama(gpu_model, n_gpu_layers=-1, **SMALL) as llama:
        generate(llama)
