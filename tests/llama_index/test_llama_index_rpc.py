"""LlamaIndex's ``LlamaCPP`` loads its model across RPC workers with ``rpc_servers``."""

from __future__ import annotations

import _socket
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_index_support import LOAD_SETTINGS

from llamacpp_integrations.llama_index import LlamaCPP
from rpc_support import workers


@pytest.fixture
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let this test reach its own loopback worker (the suite blocks every other connection)."""
    monkeypatch.setattr(socket.socket, "connect", _socket.socket.connect)


@pytest.fixture
def server(loopback_allowed: None) -> Iterator[str]:
    """One loopback worker (the test closes its model before it stops)."""
    with workers(1) as addresses:
        yield addresses[0]


def test_llamacpp_puts_its_layers_on_the_workers(model_path: Path, server: str) -> None:
    llm = LlamaCPP(
        model_path=model_path,
        max_new_tokens=4,
        rpc_servers=[server],
        model_kwargs={**LOAD_SETTINGS, "n_gpu_layers": -1},
    )
    assert llm.load_settings["rpc_servers"] == [server]
    try:
        assert llm.complete("1, 2, 3,").text is not None
        assert llm._model().model.rpc_servers == [server]
    finally:
        llm._model().close()
