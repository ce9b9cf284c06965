"""An RPC worker: lends this machine's devices to models loaded elsewhere with ``rpc_servers=``.

    llamacpp-rpc-server --host 127.0.0.1 --port 50052 [--threads N] [--cache DIR] [--device NAME,...]
    python -m llamacpp_native.cli.rpc_server ...

It runs ggml's own RPC server (``ggml_backend_rpc_start_server``, the same code
as llama.cpp's ``rpc-server`` tool) until it is stopped with Ctrl-C or SIGTERM.
It serves one client connection at a time.

The protocol has no authentication and no encryption: whoever reaches the port
can read and write the worker's memory and make it compute.  Bind it to loopback
(the default) or to an address on a network you trust, never to the internet.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from llamacpp_native.binding._library import ffi, lib
from llamacpp_native.binding.offload import local_devices, local_offload_devices
from llamacpp_native.binding.rpc import DEFAULT_PORT, is_loopback_host, protocol_version

_EXPOSED_WARNING = """\
WARNING: binding the RPC worker to {host!r}, which is not loopback.
WARNING: llama.cpp's RPC protocol has NO authentication and NO encryption: anyone who can
WARNING: reach {host}:{port} can read and write this process's memory and run computations.
WARNING: Only do this on a network you trust completely, behind a firewall; never expose
WARNING: the port to the internet or to an untrusted network."""


def _name(device: Any) -> str:
    return str(ffi.string(lib.ggml_backend_dev_name(device)).decode())


def select_devices(names: Sequence[str] | None) -> list[Any]:
    """The devices to serve: those named, else every GPU, else the CPU (llama.cpp's rpc-server rule)."""
    devices = local_devices()
    if names:
        by_name = {_name(d).lower(): d for d in devices}
        unknown = [n for n in names if n.lower() not in by_name]
        if unknown:
            raise SystemExit(
                f"llamacpp-rpc-server: unknown device(s) {unknown}; "
                f"this build has {sorted(map(_name, devices))}"
            )
        return [by_name[n.lower()] for n in names]
    cpus = [d for d in devices if lib.ggml_backend_dev_type(d) == lib.GGML_BACKEND_DEVICE_TYPE_CPU]
    return local_offload_devices() or cpus


def build_parser() -> argparse.ArgumentParser:
    """The worker's command line."""
    major, minor = protocol_version()
    parser = argparse.ArgumentParser(
        prog="llamacpp-rpc-server",
        description=f"Serve this machine's devices to llama.cpp RPC clients (protocol {major}.{minor}). "
        "NO authentication: keep it on loopback or a trusted network.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for the CPU device (default: all cores)"
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        default=None,
        help="keep a local file cache of large tensors here, so a reloaded model is not sent again",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="comma-separated devices to serve (default: every GPU, else the CPU); see --list-devices",
    )
    parser.add_argument("--list-devices", action="store_true", help="list this build's devices and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the worker until it is stopped (Ctrl-C or SIGTERM)."""
    args = build_parser().parse_args(argv)
    if args.list_devices:
        for device in local_devices():
            print(f"{_name(device)}: {ffi.string(lib.ggml_backend_dev_description(device)).decode()}")
        return
    if not 0 < args.port < 65536:
        raise SystemExit("llamacpp-rpc-server: --port must be 1-65535")
    threads = args.threads if args.threads is not None else len(os.sched_getaffinity(0))
    if threads < 1:
        raise SystemExit("llamacpp-rpc-server: --threads must be at least 1")
    if ":" in args.host:
        raise SystemExit("llamacpp-rpc-server: --host takes an IPv4 address or a host name")
    if not is_loopback_host(args.host):
        print(_EXPOSED_WARNING.format(host=args.host, port=args.port), file=sys.stderr, flush=True)
    cache_dir = ffi.NULL
    if args.cache is not None:
        os.makedirs(args.cache, exist_ok=True)
        cache_dir = os.fsencode(os.path.abspath(args.cache))
    devices = select_devices(args.device.split(",") if args.device else None)
    device_array = ffi.new("ggml_backend_dev_t[]", devices)
    # ggml's server loop never returns to Python, so Python's own signal handlers
    # could never run: let Ctrl-C and SIGTERM end the process directly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.stdout.flush()
    endpoint = f"{args.host}:{args.port}".encode()
    lib.ggml_backend_rpc_start_server(endpoint, cache_dir, threads, len(devices), device_array)
    # It returns only when it could not start (the reason is on stderr).
    raise SystemExit(f"llamacpp-rpc-server: could not serve on {args.host}:{args.port} (is the port in use?)")


if __name__ == "__main__":
    main()
