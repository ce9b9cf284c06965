"""Fixtures: the real server on the default model, and the OpenAI and HTTP clients for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'server' extra")

import httpx  # noqa: E402
import openai  # noqa: E402
import yaml  # noqa: E402
from server_support import SERVER_FLAGS, RunningServer  # noqa: E402


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningServer]]:
    """``start_server(*flags, env=...)``: a ready server (stopped at the end of the session at the latest)."""
    started: list[RunningServer] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> RunningServer:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = RunningServer(list(flags), log, env)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server: Callable[..., RunningServer], model_path: Path) -> RunningServer:
    """The main test server on the default model (no API key)."""
    return start_server("--model", str(model_path), *SERVER_FLAGS)


@pytest.fixture(scope="session")
def model_name(model_path: Path) -> str:
    """The name tests use for the model: its file name (the server also accepts its path)."""
    return model_path.name


@pytest.fixture(scope="session")
def client(server: RunningServer) -> openai.OpenAI:
    """The official OpenAI client, pointed at the main server (no retries: statuses are asserted)."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def aclient(server: RunningServer) -> openai.AsyncOpenAI:
    """The official async OpenAI client (one per test: it belongs to the test's event loop)."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    """Plain HTTP to the main server, for what the OpenAI client hides (status lines, SSE bytes)."""
    with httpx.Client(base_url=server.url, timeout=120) as session:
        yield session


@pytest.fixture(scope="session")
def tiny_server(
    start_server: Callable[..., RunningServer],
    reranker_path: Path,
    fim_model: tuple[Path, dict[str, int]],
    tmp_path_factory: pytest.TempPathFactory,
) -> RunningServer:
    """A server of the tiny models, all resident: ``reranker`` (the default), ``coder`` (FIM tokens), and
    ``classifier``: the reranker's weights in a GGUF that does not declare rank pooling, served with
    ``pooling: rank``."""
    from tiny_models import write_reranker

    folder = tmp_path_factory.mktemp("tiny-config")
    classifier = write_reranker(folder / "classifier.gguf", rank_pooling=False)
    common = {"n_ctx": 512, "n_batch": 64, "n_parallel": 2, "n_threads": 1}
    config = {
        "models_max": 3,
        "models": [
            {**common, "model": str(reranker_path), "model_alias": "reranker"},
            {**common, "model": str(fim_model[0]), "model_alias": "coder", "seed": 1},
            {**common, "model": str(classifier), "model_alias": "classifier", "pooling": "rank"},
        ],
    }
    path = folder / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    return start_server("--config_file", str(path))
