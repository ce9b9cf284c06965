"""Layers on RPC workers (llama.cpp's RPC backend), on loopback.

Two ``llamacpp-rpc-server`` workers serve their CPU device on free ports for
the module.  A split model must compute what the local model computes: the
workers' CPU device never uses the repacked weight layouts, so both sides load
with ``use_extra_bufts=False`` to run the same kernels.  Anything that stops a
worker while a model uses it runs in a child process, because ggml aborts the
process that loses a worker mid-call.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamacpp_native import Llama, Model, ModelLoadError, RpcServerError
from llamacpp_native.binding import rpc
from llamacpp_native.binding._library import lib
from rpc_support import (
    WHEN_A_WORKER_STOPS,
    assert_clean_exit_after_worker_death,
    free_port,
    run_client,
    worker_death_steps,
    worker_processes,
    workers,
)

PROMPT = "1, 2, 3, 4, 5,"
SMALL = {"n_ctx": 128, "n_parallel": 1, "n_threads": 1, "use_extra_bufts": False}


@pytest.fixture(scope="module")
def servers() -> Iterator[list[str]]:
    """Two workers for the module, as ``127.0.0.1:port`` addresses."""
    with workers(2) as addresses:
        yield addresses


def greedy(llama: Llama, max_tokens: int = 8) -> str:
    text = llama.create_completion(PROMPT, max_tokens=max_tokens, temperature=0.0)["choices"][0]["text"]
    assert isinstance(text, str)
    return text


@pytest.fixture(scope="module")
def local_text(model_path: Path) -> str:
    """The all-local greedy continuation (no repacked weights, like the workers)."""
    with Llama(model_path, **SMALL) as llama:
        return greedy(llama)


def test_worker_speaks_this_builds_protocol_version(servers: list[str]) -> None:
    major, minor, _patch = rpc.handshake(servers[0])
    assert (
        (major, minor) == rpc.protocol_version() == (lib.RPC_PROTO_MAJOR_VERSION, lib.RPC_PROTO_MINOR_VERSION)
    )


def test_split_across_two_workers_and_the_cpu_gives_the_local_greedy_output(
    model_path: Path, servers: list[str], local_text: str
) -> None:
    with Llama(model_path, n_gpu_layers=12, tensor_split=[1, 1], rpc_servers=servers, **SMALL) as llama:
        assert greedy(llama) == local_text
        report = llama.offload_report()
    by_endpoint = {d.endpoint: d.name for d in report.devices if d.kind == "rpc"}
    assert set(by_endpoint) == set(servers)
    layers = report.layers
    assert layers[by_endpoint[servers[0]]] == layers[by_endpoint[servers[1]]] == 6
    assert layers["CPU"] == len(report.layer_devices) - 12
    assert report.offloaded is not None and report.offloaded[0] == 12
    model_buffers = report.buffer_mib("model")
    assert all(any(s in name for name in model_buffers) for s in servers)


def test_every_layer_on_the_workers_gives_the_local_greedy_output(
    model_path: Path, servers: list[str], local_text: str
) -> None:
    with Llama(model_path, n_gpu_layers=-1, rpc_servers=servers, **SMALL) as llama:
        assert greedy(llama) == local_text
        assert "CPU" not in llama.offload_report().layers


def test_split_mode_none_puts_every_offloaded_layer_on_main_gpu(model_path: Path, servers: list[str]) -> None:
    with Llama(
        model_path, n_gpu_layers=-1, split_mode="none", main_gpu=1, rpc_servers=servers, **SMALL
    ) as llama:
        report = llama.offload_report()
    second = next(d.name for d in report.devices if d.endpoint == servers[1])
    assert set(report.layers) == {second}


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        pytest.param({"split_mode": "none", "main_gpu": 2}, "main_gpu", id="main-gpu-past-the-devices"),
        pytest.param({"split_mode": "row", "main_gpu": 5}, "main_gpu", id="row-main-gpu-past-the-devices"),
        pytest.param({"tensor_split": [1.0, -1.0]}, "tensor_split", id="negative-share"),
        pytest.param({"tensor_split": [0.0, 0.0]}, "tensor_split", id="no-share-at-all"),
        pytest.param({"tensor_split": [1.0, 1.0, 1.0]}, "tensor_split", id="more-shares-than-devices"),
    ],
)
def test_offload_settings_the_devices_cannot_meet_are_a_value_error_naming_them(
    model_path: Path, servers: list[str], settings: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        Model(model_path, n_gpu_layers=-1, rpc_servers=servers, **settings)  # type: ignore[arg-type]
    with Model(model_path, n_gpu_layers=-1, rpc_servers=servers) as model:  # nothing was left behind
        assert "CPU" not in model.offload_report().layers


def test_offload_kqv_false_keeps_the_kv_cache_on_this_machine(model_path: Path, servers: list[str]) -> None:
    with Llama(model_path, n_gpu_layers=-1, rpc_servers=servers, **SMALL) as llama:
        offloaded = llama.offload_report().buffer_mib("KV")
    with Llama(model_path, n_gpu_layers=-1, rpc_servers=servers, offload_kqv=False, **SMALL) as llama:
        kept = llama.offload_report().buffer_mib("KV")
    assert any(name.startswith("RPC") for name in offloaded)
    assert set(kept) == {"CPU"}


def test_models_sharing_a_worker_share_its_devices(model_path: Path, servers: list[str]) -> None:
    registered = lib.ggml_backend_dev_count()
    with (
        Model(model_path, n_gpu_layers=-1, rpc_servers=servers[:1]) as first,
        Model(model_path, n_gpu_layers=-1, rpc_servers=servers[:1]) as second,
    ):
        assert first.devices() == second.devices()
        assert [d.endpoint for d in first.devices() if d.kind == "rpc"] == servers[:1]
    assert lib.ggml_backend_dev_count() == registered  # workers are never added to the global registry


def test_rpc_servers_without_n_gpu_layers_warns_that_nothing_goes_there(
    model_path: Path, servers: list[str]
) -> None:
    with (
        pytest.warns(RuntimeWarning, match="n_gpu_layers=0"),
        Model(model_path, rpc_servers=servers[:1]) as model,
    ):
        assert set(model.offload_report().layers) == {"CPU"}


def test_unreachable_worker_is_a_typed_error_naming_it(model_path: Path, local_text: str) -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(RpcServerError, match=address) as raised:
        Model(model_path, n_gpu_layers=-1, rpc_servers=[address])
    assert isinstance(raised.value, ModelLoadError)
    with Llama(model_path, **SMALL) as llama:  # this process lives on, and so does local work
        assert greedy(llama) == local_text


@pytest.mark.parametrize(
    "address", ["no-port", "127.0.0.1:", ":50052", "[::1]:50052", "127.0.0.1:70000", "127.0.0.1:port"]
)
def test_malformed_address_is_a_typed_error(model_path: Path, address: str) -> None:
    with pytest.raises(RpcServerError, match="RPC server address"):
        Model(model_path, n_gpu_layers=-1, rpc_servers=[address])


def test_unresolvable_host_is_a_typed_error(model_path: Path) -> None:
    with pytest.raises(RpcServerError, match="cannot resolve"):
        Model(model_path, n_gpu_layers=-1, rpc_servers=["no-such-host.invalid:50052"])


def _listener(reply: bytes | None) -> tuple[str, socket.socket]:
    """A loopback TCP server that answers every connection with ``reply`` (None: says nothing)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                if reply is not None:
                    conn.recv(1024)
                    conn.sendall(reply)
                else:
                    while conn.recv(1024):  # read everything, answer nothing, until the client leaves
                        pass

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{server.getsockname()[1]}", server


def test_a_port_with_another_kind_of_server_is_a_typed_error(model_path: Path) -> None:
    address, server = _listener(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    with server, pytest.raises(RpcServerError, match=f"{address}.*not an RPC worker"):
        Model(model_path, n_gpu_layers=-1, rpc_servers=[address])


def test_a_listener_that_never_answers_times_out_as_a_typed_error() -> None:
    address, server = _listener(None)
    with server, pytest.raises(RpcServerError, match=f"{address}: no handshake within 0.5 s"):
        rpc.handshake(address, timeout=0.5)


def _run_child(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=240
    )


CHILD_SETUP = """
    import sys
    sys.path.insert(0, {tests!r})
    from rpc_support import free_port, start_worker
    from llamacpp_native import Llama, RpcServerError
    port = free_port()
    worker = start_worker(port)
    llama = Llama({model!r}, n_ctx=256, n_parallel=1, n_threads=1, n_gpu_layers=-1,
                  rpc_servers=[f"127.0.0.1:{{port}}"])
"""


def test_a_worker_that_stopped_between_requests_is_a_typed_error_and_the_process_survives(
    model_path: Path,
) -> None:
    setup = CHILD_SETUP.format(tests=str(Path(__file__).parents[1]), model=str(model_path))
    result = _run_child(
        setup
        + """
    llama.create_completion("Hi", max_tokens=2)
    print("usable before:", llama.model.usable)
    worker.kill(); worker.wait()
    try:
        llama.create_completion("Hi", max_tokens=2)
    except RpcServerError as error:
        print("typed error:", error)
    print("usable after:", llama.model.usable, repr(llama.model))
    llama.close()
    print("closed")
    worker = start_worker(port)  # back on the same address: ggml still holds the dead connection
    try:
        Llama(llama.model_path, n_gpu_layers=-1, rpc_servers=[f"127.0.0.1:{port}"])
    except RpcServerError as error:
        print("reload:", error)
    worker.terminate(); worker.wait()
    """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "typed error: RPC server 127.0.0.1:" in result.stdout
    assert "load it again in a new process once the worker is back" in result.stdout
    assert "usable before: True" in result.stdout
    assert f"usable after: False <Model {model_path.name}: unusable>" in result.stdout
    assert "closed" in result.stdout
    assert "restart the process" in result.stdout.split("reload:")[1]


NATIVE_CLIENT = """
from llamacpp_native import Llama
llama = Llama(MODEL, n_ctx=256, n_parallel=1, n_threads=1, n_gpu_layers=-1, rpc_servers=addresses)
def ask():
    return llama.create_completion("1, 2, 3,", max_tokens=2)["choices"][0]["text"]
"""


@pytest.mark.parametrize("then_the_other", [False, True], ids=["other-outlives-client", "other-stops-too"])
@pytest.mark.parametrize("dies", [0, 1], ids=["first-worker-dies", "second-worker-dies"])
@pytest.mark.parametrize("when", WHEN_A_WORKER_STOPS)
def test_a_worker_that_stops_outside_a_call_is_a_typed_error_and_the_client_exits_0(
    model_path: Path, when: str, dies: int, then_the_other: bool
) -> None:
    """The model leaks its memory instead of freeing it on a dead worker, at close and at exit."""
    with worker_processes(2) as started:
        steps = worker_death_steps(started, when=when, dies=dies, then_the_other=then_the_other)
        result = run_client(model_path, started, NATIVE_CLIENT + steps)
    assert_clean_exit_after_worker_death(result, when, started[dies][0])


def test_a_worker_dying_mid_generation_aborts_the_client_process_as_documented(model_path: Path) -> None:
    """ggml aborts on a worker that stops answering mid-call: only a child process contains that."""
    setup = CHILD_SETUP.format(tests=str(Path(__file__).parents[1]), model=str(model_path))
    result = _run_child(
        setup
        + """
    for n, chunk in enumerate(llama.create_completion("Once upon a time", max_tokens=200, stream=True)):
        if n == 3:
            worker.kill(); worker.wait()
    print("generation finished")
    """
    )
    assert result.returncode == -signal.SIGABRT
    assert "generation finished" not in result.stdout
    assert "Remote RPC server crashed" in result.stderr


def test_worker_warns_loudly_when_bound_beyond_loopback() -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: the warning comes, then the bind fails.
    result = subprocess.run(
        [sys.executable, "-m", "llamacpp_native.cli.rpc_server", "--host", "192.0.2.1", "--port", "50052"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "NO authentication" in result.stderr
    assert "WARNING" in result.stderr
    assert result.returncode != 0
    assert "could not serve on 192.0.2.1:50052" in result.stderr


def test_worker_lists_its_devices() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llamacpp_native.cli.rpc_server", "--list-devices"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("CPU:")


def test_offload_report_on_a_cpu_only_model(model_path: Path) -> None:
    with Llama(model_path, n_ctx=128, n_parallel=1, n_threads=1) as llama:
        report = llama.offload_report()
    assert set(report.layers) == {"CPU"}
    assert report.offloaded == (0, len(report.layer_devices))
    assert {b.kind for b in report.buffers} >= {"model", "KV", "compute"}
    assert [d.kind for d in report.devices] == ["cpu"]
    assert "CPU (cpu" in str(report)


def test_kv_cache_type_and_flash_attention_reach_the_context(model_path: Path) -> None:
    with Llama(model_path, n_ctx=256, n_parallel=1, n_threads=1) as llama:
        f16 = sum(llama.offload_report().buffer_mib("KV").values())
    with Llama(
        model_path, n_ctx=256, n_parallel=1, n_threads=1, type_k="q8_0", type_v="q8_0", flash_attn=True
    ) as llama:
        q8 = sum(llama.offload_report().buffer_mib("KV").values())
        assert greedy(llama)  # a quantized V cache needs flash attention, which this turned on
    with Llama(model_path, n_ctx=256, n_parallel=1, n_threads=1, f16_kv=False) as llama:
        f32 = sum(llama.offload_report().buffer_mib("KV").values())
    assert q8 < f16 < f32
