"""Layers on other machines: llama.cpp's RPC backend, with every address checked from Python first.

A worker (``llamacpp-rpc-server``, or llama.cpp's own ``rpc-server``) exposes its
devices over TCP; ``Model(..., rpc_servers=["host:port"])`` puts layers there as
``n_gpu_layers`` and ``tensor_split`` say.  ggml calls ``GGML_ABORT`` (which kills
the process) when it cannot connect to a worker or the handshake fails, so
``connect`` resolves the address, connects and checks the protocol version itself,
with a timeout, before ggml ever sees it; a bad address is an ``RpcServerError``
naming it.

The protocol has no authentication and no encryption: anyone who can reach a
worker's port can read and write its memory.  Keep workers on loopback or on a
network you trust.

Two things about workers follow from ggml's design and shape this module:

- A worker serves one client connection at a time; another client's handshake
  waits until the first disconnects.  A model keeps its connection open while it
  holds buffers on the worker, so a second *process* cannot use a worker that is
  in use (the check here reports that as a timeout rather than hanging), while
  models in the *same* process share ggml's one connection per address.
- A worker that dies while a model uses it makes ggml abort the client process
  (``RPC_STATUS_ASSERT``) the next time anything talks to it: a decode, and also
  freeing the model's buffers there.  ``check_alive`` lets a caller find a dead
  worker between requests; a model that finds one never frees its memory (see
  ``Model.check_rpc_servers``), and the address is marked lost for the rest of the
  process.  A death during a request cannot be caught in-process.
"""

from __future__ import annotations

import collections
import os
import socket
import stat
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llamacpp_native.binding._library import CallLog, ensure_backend, ffi, lib
from llamacpp_native.errors import RpcServerError

DEFAULT_PORT = 50052
"""The port llama.cpp's ``rpc-server`` and ``llamacpp-rpc-server`` listen on by default."""

HANDSHAKE_TIMEOUT = 5.0
"""Seconds allowed to resolve, connect to and hear the protocol version from a worker."""

_CMD_HELLO = 14
"""The handshake command's number; ggml fixes it for every protocol version (a static_assert)."""
_CONN_CAPS_SIZE = 24
"""Bytes of transport capabilities in a protocol-7 HELLO (all zero: plain TCP)."""
_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


@dataclass(frozen=True)
class Endpoint:
    """A worker's address, as ggml spells it: ``host:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """Whether the host names this machine only (127.0.0.0/8, ::1, localhost)."""
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (binding it exposes nothing to the network)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    return host.startswith("127.") or host in ("::1", "[::1]")


def parse_endpoint(text: str) -> Endpoint:
    """``"host:port"`` -> ``Endpoint``; ``RpcServerError`` for anything ggml could not use."""
    if not isinstance(text, str):
        raise RpcServerError(f"an RPC server address must be a 'host:port' string, not {text!r}")
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text:
        raise RpcServerError(f"RPC server address {text!r} is not 'host:port' (e.g. '192.168.1.20:50052')")
    if ":" in host or host.startswith("["):
        raise RpcServerError(
            f"RPC server address {text!r}: ggml's RPC client takes IPv4 addresses and host names only"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise RpcServerError(f"RPC server address {text!r}: the port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise RpcServerError(f"RPC server address {text!r}: the port must be 1-65535")
    return Endpoint(host, port)


def protocol_version() -> tuple[int, int]:
    """The (major, minor) RPC protocol version this build speaks."""
    return int(lib.RPC_PROTO_MAJOR_VERSION), int(lib.RPC_PROTO_MINOR_VERSION)


def _recv_exactly(sock: socket.socket, n: int, endpoint: Endpoint) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RpcServerError(
                f"RPC server {endpoint} closed the connection during the handshake: it is not an RPC "
                f"worker, or one of another protocol version (this build speaks "
                f"{'.'.join(map(str, protocol_version()))})"
            )
        data += chunk
    return data


def _resolve(endpoint: Endpoint) -> tuple[str, int]:
    """The IPv4 address ggml will connect to (it resolves IPv4 only), or ``RpcServerError``."""
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as error:
        raise RpcServerError(
            f"RPC server {endpoint}: cannot resolve host {endpoint.host!r} ({error})"
        ) from None
    host, port = infos[0][4][:2]
    return str(host), int(port)


def _open(endpoint: Endpoint, timeout: float) -> socket.socket:
    """Resolve and connect, or raise ``RpcServerError`` saying which step failed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(_resolve(endpoint))
    except TimeoutError:
        sock.close()
        raise RpcServerError(f"RPC server {endpoint}: no answer to connect within {timeout:g} s") from None
    except OSError as error:
        sock.close()
        if isinstance(error, RpcServerError):
            raise
        reason = error.strerror or str(error)
        raise RpcServerError(
            f"RPC server {endpoint}: cannot connect ({reason}); is llamacpp-rpc-server running there?"
        ) from None
    return sock


def _connections_to(address: tuple[str, int]) -> list[socket.socket] | None:
    """Duplicates of this process's open TCP connections to ``address`` (ggml's), or None where unlisted.

    Linux only (``/proc/self/fd``); the caller closes them, which leaves ggml's own open.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    import fcntl  # POSIX only, like /proc

    found = []
    for name in names:
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            sock = socket.socket(fileno=os.dup(fd))
            # a duplicate shares the blocking flag: Python's default timeout must not change ggml's
            sock.settimeout(None)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        except OSError:
            continue
        try:
            if sock.family == socket.AF_INET and sock.getpeername() == address:
                found.append(sock)
                continue
        except OSError:
            pass
        sock.close()
    return found


def handshake(endpoint: Endpoint | str, timeout: float = HANDSHAKE_TIMEOUT) -> tuple[int, int, int]:
    """Connect, say HELLO as ggml does, and return the worker's protocol version.

    Raises ``RpcServerError`` naming the address if it cannot be resolved or
    reached, does not answer in ``timeout`` seconds, is not an RPC worker, or
    speaks a protocol version this build cannot use (ggml's rule: the same major
    version, a minor version no newer than ours).
    """
    if isinstance(endpoint, str):
        endpoint = parse_endpoint(endpoint)
    with _open(endpoint, timeout) as sock:
        try:
            sock.sendall(struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
            (size,) = struct.unpack("<Q", _recv_exactly(sock, 8, endpoint))
            if not 3 <= size <= 64:
                raise RpcServerError(
                    f"RPC server {endpoint} answered the handshake with something else (a {size}-byte "
                    "reply): it is not an RPC worker"
                )
            major, minor, patch = _recv_exactly(sock, size, endpoint)[:3]
        except TimeoutError:
            raise RpcServerError(
                f"RPC server {endpoint}: no handshake within {timeout:g} s. A worker serves one client at "
                "a time, so another process may be using it; or the port is not an RPC worker's"
            ) from None
        except OSError as error:
            raise RpcServerError(f"RPC server {endpoint}: the handshake failed ({error})") from None
    ours_major, ours_minor = protocol_version()
    if major != ours_major or minor > ours_minor:
        raise RpcServerError(
            f"RPC server {endpoint} speaks RPC protocol {major}.{minor}.{patch}; this build speaks "
            f"{ours_major}.{ours_minor}.x. Run a worker built from the same llama.cpp version "
            "(llamacpp-rpc-server from this package)"
        )
    return major, minor, patch


def check_alive(endpoint: Endpoint | str, timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Raise ``RpcServerError`` if the worker at ``endpoint`` has stopped.

    Where this process already holds ggml's connection to the worker (a loaded
    model does), that connection is inspected without reading from it: a worker
    that exited has closed it.  Otherwise a new connection must be accepted.  A
    worker on a machine that vanished without closing its connections is not
    found this way.
    """
    if isinstance(endpoint, str):
        endpoint = parse_endpoint(endpoint)
    connections = _connections_to(_resolve(endpoint))
    if not connections:
        _open(endpoint, timeout).close()
        return
    for sock in connections:
        with sock:
            try:
                closed = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except (BlockingIOError, TimeoutError):
                continue  # open, and nothing to read: alive
            except OSError as error:
                raise RpcServerError(
                    f"RPC server {endpoint}: the connection to it failed ({error})"
                ) from None
            if closed:
                raise RpcServerError(f"RPC server {endpoint} closed its connection: the worker has stopped")


_lock = threading.Lock()
_devices: dict[str, tuple[Any, ...]] = {}
"""Per address: its ggml devices.  ggml keeps them for the life of the process, one set per address."""
_users: collections.Counter[str] = collections.Counter()
"""Per address: models of this process that hold it (and so may hold ggml's connection to it)."""
_lost: set[str] = set()
"""Addresses whose dead connection an abandoned model keeps (``mark_lost``)."""


def mark_lost(names: Sequence[str]) -> None:
    """Remember workers whose connection this process lost while a model kept it.

    ggml keeps one connection per address for as long as any buffer on it lives;
    a model abandoned after its worker died keeps the dead one for good, and ggml
    would reuse it (and abort) for any new model naming that address.
    """
    with _lock:
        _lost.update(names)


def lost_servers() -> list[str]:
    """The workers this process lost while a model used them (``mark_lost``); none can be used again here."""
    with _lock:
        return sorted(_lost)


def acquire(servers: Sequence[str], timeout: float = HANDSHAKE_TIMEOUT) -> tuple[list[str], list[Any]]:
    """Check each worker and return (addresses, their ggml devices in order); pair with ``release``.

    A worker is registered with ggml once per process and its devices reused, so
    loading many models against one worker never duplicates its devices.  A
    worker already held by a model of this process is only checked to be alive
    (its one connection belongs to that model, so it could not answer a handshake).
    """
    if isinstance(servers, str):
        servers = [servers]
    endpoints = [parse_endpoint(s) for s in servers]
    names = [str(e) for e in endpoints]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RpcServerError(f"RPC server {duplicates[0]} is listed twice in rpc_servers")
    max_servers = int(lib.GGML_RPC_MAX_SERVERS)
    if len(names) > max_servers:
        raise RpcServerError(f"{len(names)} RPC servers given; ggml takes at most {max_servers}")
    ensure_backend()
    devices: list[Any] = []
    with _lock:
        for endpoint, name in zip(endpoints, names, strict=True):
            if name in _lost:
                raise RpcServerError(
                    f"RPC server {name}: this process lost its connection to it while a model used it, and "
                    "ggml cannot open another to the same address in this process; restart the process"
                )
            if _users[name] > 0:
                check_alive(endpoint, timeout)
            else:
                handshake(endpoint, timeout)
            if name not in _devices:
                with CallLog() as log:
                    reg = lib.ggml_backend_rpc_add_server(name.encode())
                if reg == ffi.NULL:
                    reason = log.reason("it reported no devices")
                    raise RpcServerError(f"RPC server {name} offers no device: {reason}")
                _devices[name] = tuple(
                    lib.ggml_backend_reg_dev_get(reg, i) for i in range(lib.ggml_backend_reg_dev_count(reg))
                )
            devices.extend(_devices[name])
        for name in names:
            _users[name] += 1
    return names, devices


def release(names: Sequence[str]) -> None:
    """Forget that a model holds these workers (its buffers on them are freed)."""
    with _lock:
        for name in names:
            _users[name] -= 1
            if _users[name] <= 0:
                del _users[name]


def endpoint_of(device: Any) -> str | None:
    """The worker address of an RPC device (ggml puts it in the description), else ``None``."""
    if ffi.string(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(device))) != b"RPC":
        return None
    return str(ffi.string(lib.ggml_backend_dev_description(device)).decode())
