"""Shared fixtures: the real default model, built once per session and cached."""

from __future__ import annotations

import os

# Waiting OpenMP threads sleep instead of spinning: the suite shares two cores
# with notebook kernels and worker threads, and spinning threads starve them.
# (Set before llama.cpp is loaded; users' processes keep OpenMP's default.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from llamacpp_native import Llama  # noqa: E402


@pytest.fixture(scope="session")
def model_path() -> Path:
    """Path of the default real model (Gemma 3 270M Q4_K_M), assembled once and cached."""
    from llamacpp_integrations.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def lora_paths(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two random rank-4 LoRA adapters for the default model (``alpha.gguf``, ``beta.gguf``).

    Each turns the greedy continuation of "1, 2, 3, 4," into another one of its
    own, by a margin far above numeric noise (see tests/lora_support.py).
    """
    from lora_support import write_lora_adapter

    folder = tmp_path_factory.mktemp("lora")
    return (
        write_lora_adapter(folder / "alpha.gguf", model_path, seed=7, strength=0.4),
        write_lora_adapter(folder / "beta.gguf", model_path, seed=1, strength=0.4),
    )


@pytest.fixture(scope="session")
def projector_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight ``gemma3`` projector (mmproj) for the default model (tests/mtmd_support.py)."""
    from mtmd_support import write_test_projector

    return write_test_projector(tmp_path_factory.mktemp("mmproj") / "mmproj-tiny.gguf")


@pytest.fixture(scope="session")
def reranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight BERT reranker (rank pooling, one score) written by tests/tiny_models.py."""
    from tiny_models import write_reranker

    return write_reranker(tmp_path_factory.mktemp("rerank") / "reranker-tiny.gguf")


@pytest.fixture(scope="session")
def fim_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A tiny random-weight llama whose vocabulary has FIM tokens: its path and their ids by kind
    (``pre``, ``suf``, ``mid``, ``pad``, ``rep``, ``sep``; tests/tiny_models.py)."""
    from tiny_models import write_fim_model

    path = tmp_path_factory.mktemp("fim") / "coder-tiny.gguf"
    return path, write_fim_model(path)


@pytest.fixture(scope="session")
def chat_templates_dir() -> Path:
    """``models/templates`` of the pinned llama.cpp tree the package was built from (Jinja templates of
    many model families), found where the build fetched it; the tests never download it."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "build_tools"))
    from fetch_llama_cpp import COMPLETE_MARKER, cache_root, load_pin

    explicit = os.environ.get("LLAMA_CPP_SOURCE_DIR")
    pin = load_pin()
    tree = Path(explicit) if explicit else cache_root() / f"llama.cpp-{pin['version']}-{pin['sha256'][:12]}"
    if not explicit and not (tree / COMPLETE_MARKER).is_file():
        pytest.skip(
            "the pinned llama.cpp source is not in this user's cache (it is there after a source build)"
        )
    return tree / "models" / "templates"


@pytest.fixture(scope="session")
def llama(model_path: Path) -> Iterator[Llama]:
    """One shared ``Llama`` on the default model (tests must leave it usable)."""
    with Llama(model_path, n_ctx=2048, n_parallel=4, seed=1234) as instance:
        yield instance


# Endings that complete any cut-off JSON tail: a string, an escape, a key, a
# literal, a number, or a value still owed after ':' or ','.
_JSON_TAILS = [
    "",
    "0",
    '"',
    '":0',
    ":0",
    'n"',
    'n":0',
    '0"',
    '00"',
    '000"',
    '0000"',
    '0000":0',
    '"k":0',
    "e",
    "le",
    "se",
    "lse",
    "alse",
    "ue",
    "rue",
    "l",
    "ll",
    "ull",
]


def is_json_prefix(text: str) -> bool:
    """Whether ``text`` is the start of some JSON document, as a JSON grammar only admits."""
    closers: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped = char == "\\" and not escaped
            in_string = char != '"' or escaped
        elif char == '"':
            in_string = True
        elif char in "[{":
            closers.append("]" if char == "[" else "}")
        elif char in "]}" and (not closers or closers.pop() != char):
            return False
    ending = "".join(reversed(closers))
    for tail in _JSON_TAILS:
        try:
            json.loads(text + tail + ending)
        except json.JSONDecodeError:
            continue
        return True
    return False


@pytest.fixture(scope="session")
def json_prefix() -> Callable[[str], bool]:
    """``json_prefix(text)``: whether ``text`` starts some JSON document (see ``is_json_prefix``)."""
    return is_json_prefix
