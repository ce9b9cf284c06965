"""LangChain classes load their model across RPC workers with ``rpc_servers``; a worker's death is typed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llamacpp_integrations.langchain import ChatLlamaCpp, LlamaCpp
from llamacpp_native import RpcServerError
from rpc_support import (
    WHEN_A_WORKER_STOPS,
    assert_clean_exit_after_worker_death,
    free_port,
    run_client,
    worker_death_steps,
    worker_processes,
    workers,
)

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


LANGCHAIN_CLIENT = """
from llamacpp_integrations.langchain import ChatLlamaCpp
chat = ChatLlamaCpp(model_path=MODEL, n_gpu_layers=-1, rpc_servers=addresses, n_ctx=256, n_threads=1,
                    max_tokens=2, temperature=0.0, model_kwargs={"n_parallel": 1})
chat.llama  # load the shared model now; it stays cached until the interpreter exits
def ask():
    return ChatLlamaCpp(**chat.model_dump()).invoke("Hi").content  # a new object: the cached model
"""


@pytest.mark.parametrize(("dies", "then_the_other"), [(0, False), (1, True)], ids=["one-dies", "both-die"])
@pytest.mark.parametrize("when", WHEN_A_WORKER_STOPS)
def test_the_cached_model_of_a_stopped_worker_is_a_typed_error_and_the_process_exits_0(
    model_path: Path, when: str, dies: int, then_the_other: bool
) -> None:
    with worker_processes(2) as started:
        steps = worker_death_steps(started, when=when, dies=dies, then_the_other=then_the_other)
        result = run_client(model_path, started, LANGCHAIN_CLIENT + steps)
    assert_clean_exit_after_worker_death(result, when, started[dies][0])
