"""Fixtures for the LlamaIndex integration: one shared model, no network."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index_support import LOAD_SETTINGS, RecordingTool

from llamacpp_integrations.llama_index import LlamaCPP, LlamaCppEmbedding


@pytest.fixture(scope="session", autouse=True)
def no_network() -> Iterator[None]:
    """Fail any attempt to reach the network (an OpenAI default, a model download)."""
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family != socket.AF_UNIX:
            raise RuntimeError(f"the LlamaIndex tests must not reach the network (connect to {address!r})")
        real_connect(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        yield


@pytest.fixture(scope="session")
def llm(model_path: Path) -> LlamaCPP:
    """The default model as a LlamaIndex LLM, with short answers."""
    return LlamaCPP(model_path=model_path, max_new_tokens=32, model_kwargs=LOAD_SETTINGS)


@pytest.fixture(scope="session")
def embed_model(model_path: Path) -> LlamaCppEmbedding:
    """The default model as a LlamaIndex embedding model."""
    return LlamaCppEmbedding(model_path=model_path, model_kwargs=LOAD_SETTINGS)


@pytest.fixture
def multiply() -> RecordingTool:
    return RecordingTool()
