"""The GPU tests: skipped as a whole unless this build of llamacpp_native sees a CUDA device.

Every test in this folder is marked ``gpu`` (run them with ``pytest -m gpu tests/gpu``).
They need no downloaded model: a small random-weight llama (F16) is written once per
session by ``benchmarks/gpu/make_model.py``, with the vocabulary of the pinned
llama.cpp tree (``LLAMA_CPP_SOURCE_DIR``, else the tree the build cached), or
``LLAMACPP_GPU_TEST_MODEL`` names a GGUF to use instead.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TEST_LAYERS = 8
"""Transformer blocks of the test model (llama.cpp counts one more layer: the output)."""
TEST_EMBD = 512


@functools.cache
def cuda_devices() -> list[str]:
    """Names of the CUDA devices this build registered (``CUDA0``...); empty without a GPU."""
    try:
        from llamacpp_native.binding import offload

        infos = [offload.describe(d) for d in offload.local_offload_devices()]
    except Exception:  # no compiled library, or a backend that fails to start: no GPU to test
        return []
    return [info.name for info in infos if info.kind == "gpu" and info.name.upper().startswith("CUDA")]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (tests/gpu; skipped without one)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``gpu``; skip them all where no CUDA device is seen."""
    mine = [item for item in items if HERE in Path(str(item.fspath)).parents]
    if not mine:
        return
    # LLAMACPP_GPU_TESTS_FORCE=1 runs them anyway (a dry run of the tests' code on a CPU machine,
    # where every assertion about CUDA0 fails by design)
    run = cuda_devices() or os.environ.get("LLAMACPP_GPU_TESTS_FORCE") == "1"
    skip = None if run else pytest.mark.skip(reason="no CUDA device (CPU-only build or no GPU)")
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if skip is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_names() -> list[str]:
    """The CUDA devices, ``["CUDA0", ...]``."""
    return cuda_devices()


@pytest.fixture(scope="session")
def gpu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random-weight llama GGUF (``TEST_LAYERS`` x ``TEST_EMBD``, F16), written once."""
    explicit = os.environ.get("LLAMACPP_GPU_TEST_MODEL")
    if explicit:
        return Path(explicit)
    sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
    from make_model import find_vocab, write_model

    path = tmp_path_factory.mktemp("gpu-model") / "random-llama.gguf"
    write_model(path, layers=TEST_LAYERS, embd=TEST_EMBD, vocab=find_vocab(None), ctx=4096)
    return path


@pytest.fixture(scope="session")
def model_layers(gpu_model: Path) -> int:
    """The model's transformer blocks (read from its GGUF header)."""
    if not os.environ.get("LLAMACPP_GPU_TEST_MODEL"):
        return TEST_LAYERS
    import gguf

    reader = gguf.GGUFReader(gpu_model)
    arch = reader.fields["general.architecture"].contents()
    return int(reader.fields[f"{arch}.block_count"].contents())


@pytest.fixture(scope="session")
def model_embd(gpu_model: Path) -> int:
    """The model's embedding width."""
    if not os.environ.get("LLAMACPP_GPU_TEST_MODEL"):
        return TEST_EMBD
    import gguf

    reader = gguf.GGUFReader(gpu_model)
    arch = reader.fields["general.architecture"].contents()
    return int(reader.fields[f"{arch}.embedding_length"].contents())
