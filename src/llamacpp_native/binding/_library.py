"""The one place that owns the native library at run time.

Loads the compiled cffi module, initialises the llama.cpp backend once under a
lock, routes llama.cpp's log output into the ``llamacpp_native`` logger, and
remembers the latest error lines so exceptions can quote llama.cpp's reason.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from llamacpp_native.errors import LlamaError

try:
    from llamacpp_native import _llama_cffi
    from llamacpp_native._llama_cffi import ffi, lib
except ImportError as error:  # pragma: no cover - only without a build
    raise ImportError(
        "llamacpp_native's compiled extension is missing; install the package with pip "
        "(`pip install .` from the repository) so that it is built."
    ) from error


NATIVE_DIR = Path(_llama_cffi.__file__).parent
"""Where the compiled extension, llama.cpp's shared libraries and ``build_info.json`` lie."""


def _check_extension_version() -> None:
    """Refuse a compiled extension left over from another version of the package."""
    try:
        expected = version("llamacpp-integrations")
    except PackageNotFoundError:  # running from a source tree without metadata
        return
    built = ffi.string(lib.lcpp_package_version()).decode()
    if built != expected:
        raise ImportError(
            f"llamacpp_native's compiled extension was built for version {built}, but the package is "
            f"{expected}; reinstall the package (pip install .) to rebuild it"
        )


_check_extension_version()

__all__ = [
    "ffi",
    "lib",
    "capture_log",
    "ensure_backend",
    "logger",
    "read_metadata",
    "recent_errors",
    "take_message",
    "take_string",
    "set_verbose",
]

logger = logging.getLogger("llamacpp_native")
logger.addHandler(logging.NullHandler())

_LEVELS = {
    lib.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    lib.GGML_LOG_LEVEL_INFO: logging.INFO,
    lib.GGML_LOG_LEVEL_WARN: logging.WARNING,
    lib.GGML_LOG_LEVEL_ERROR: logging.ERROR,
}
_init_lock = threading.Lock()
_initialised = False
_last_level = logging.DEBUG
_line_buffer: list[str] = []
_recent_errors: collections.deque[str] = collections.deque(maxlen=8)
_captures: dict[int, list[str]] = {}
"""Per thread: llama.cpp's log text (every level) while ``capture_log`` is active there."""


@ffi.def_extern()  # type: ignore[untyped-decorator]
def lcpp_on_log(level: int, text: Any, _user_data: Any) -> None:
    """Receive one llama.cpp log fragment and forward complete lines to logging."""
    global _last_level
    if level != lib.GGML_LOG_LEVEL_CONT:
        _last_level = _LEVELS.get(level, logging.DEBUG)
    if _last_level >= logging.ERROR:
        _recent_errors.append(ffi.string(text).decode("utf-8", "replace").strip())
    sink = _captures.get(threading.get_ident())
    if sink is not None:
        sink.append(ffi.string(text).decode("utf-8", "replace"))
    if not logger.isEnabledFor(_last_level):
        return
    _line_buffer.append(ffi.string(text).decode("utf-8", "replace"))
    if _line_buffer[-1].endswith("\n"):
        message = "".join(_line_buffer).rstrip("\n")
        _line_buffer.clear()
        logger.log(_last_level, "%s", message)


def _silence_at_exit() -> None:
    """Stop calling into Python once the interpreter is shutting down."""
    lib.llama_log_set(lib.lcpp_log_discard, ffi.NULL)


def ensure_backend() -> None:
    """Initialise llama.cpp's backend and logging exactly once per process."""
    global _initialised
    if _initialised:
        return
    with _init_lock:
        if _initialised:
            return
        lib.llama_log_set(lib.lcpp_on_log, ffi.NULL)
        lib.llama_backend_init()
        atexit.register(_silence_at_exit)
        _initialised = True


def set_verbose(verbose: bool) -> None:
    """Show llama.cpp's informational output (``True``) or only warnings and errors.

    llama.cpp's debug lines stay at ``logging.DEBUG``: set the ``llamacpp_native``
    logger's level yourself to see them.
    """
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose and not logging.getLogger().handlers:
        logging.basicConfig(format="%(name)s: %(message)s")


@contextlib.contextmanager
def capture_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines (every level) emitted by this thread inside the block.

    Used to read what llama.cpp reports only in its log: where layers and buffers went.
    """
    fragments: list[str] = []
    lines: list[str] = []
    thread = threading.get_ident()
    _captures[thread] = fragments
    try:
        yield lines
    finally:
        del _captures[thread]
        lines.extend("".join(fragments).splitlines())


def recent_errors(clear: bool = True) -> str:
    """Return llama.cpp's latest error lines as one string (and forget them)."""
    text = " ".join(line for line in _recent_errors if line)
    if clear:
        _recent_errors.clear()
    return text


def take_message(out: Any) -> str:
    """Take ownership of a shim-allocated string in ``out[0]``: free it and return its text."""
    try:
        return ffi.string(out[0]).decode("utf-8", "replace") if out[0] != ffi.NULL else ""
    finally:
        lib.lcpp_string_free(out[0])
        out[0] = ffi.NULL


def take_string(status: int, out: Any, error_type: type[LlamaError]) -> str:
    """Take a shim-allocated result string; raise ``error_type`` with it if ``status`` failed."""
    text = take_message(out)
    if status != 0:
        raise error_type(text or "unknown error in llama.cpp")
    return text


def read_metadata(
    handle: Any, count: Callable[..., int], key_at: Callable[..., int], value_at: Callable[..., int]
) -> dict[str, str]:
    """GGUF key/value pairs through llama.cpp's ``*_meta_count`` / ``*_key_by_index`` / ``*_by_index``."""
    result: dict[str, str] = {}
    buf_size = 1 << 16
    buf = ffi.new("char[]", buf_size)
    for i in range(count(handle)):
        key_at(handle, i, buf, buf_size)
        key = ffi.string(buf).decode("utf-8", "replace")
        n = value_at(handle, i, buf, buf_size)
        if n >= buf_size:
            big = ffi.new("char[]", n + 1)
            value_at(handle, i, big, n + 1)
            result[key] = ffi.string(big).decode("utf-8", "replace")
        else:
            result[key] = ffi.string(buf).decode("utf-8", "replace")
    return result
