"""LangChain classes load their model across RPC workers with ``rpc_servers``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llamacpp_integrations.langchain import ChatLlamaCpp, LlamaCpp
from llamacpp_native import RpcServerError
from rpc_support import free_port, workers

SETTINGS = {
    "n_ctx": 256,
    "n_threads": 1,
    "max_tokens": 4,
    "temperature": 0.0,
    "model_kwargs": {"n_parallel": 1},
}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """One loopback worker for the module (each test closes its model before it stops)."""
    with workers(1) as addresses:
        yield addresses[0]


def test_llamacpp_puts_its_layers_on_the_workers(model_path: Path, server: str) -> None:
    llm = LlamaCpp(model_path=str(model_path), n_gpu_layers=-1, rpc_servers=[server], **SETTINGS)
    try:
        assert llm.invoke("1, 2, 3,")
        assert llm.llama.model.rpc_servers == [server]
        assert "CPU" not in llm.llama.offload_report().layers
    finally:
        llm.llama.close()


def test_chat_model_with_an_unreachable_worker_raises_the_typed_error(model_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    chat = ChatLlamaCpp(model_path=str(model_path), n_gpu_layers=-1, rpc_servers=[address], **SETTINGS)
    with pytest.raises(RpcServerError, match=address):
        chat.invoke("Hi")
