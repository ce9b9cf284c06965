"""The one place that owns the native library at run time.

Loads the compiled cffi module, initialises the llama.cpp backend once under a
lock, and routes llama.cpp's, ggml's and libmtmd's log through the shim into the
``llamacpp_native`` logger.  The shim keeps each thread's log lines apart, so a
``CallLog`` around native calls holds llama.cpp's reason for *those* calls' failure.
"""

from __future__ import annotations

import atexit
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
    "CallLog",
    "ffi",
    "lib",
    "capture_log",
    "ensure_backend",
    "logger",
    "read_metadata",
    "take_message",
    "take_string",
    "set_verbose",
    "sync_log_level",
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


@ffi.def_extern()  # type: ignore[untyped-decorator]
def lcpp_on_log_line(level: int, line: Any) -> None:
    """Receive one complete llama.cpp log line (from any thread) and pass it to logging."""
    py_level = _LEVELS.get(level, logging.DEBUG)
    if logger.isEnabledFor(py_level):
        logger.log(py_level, "%s", ffi.string(line).decode("utf-8", "replace"))


def _route_log() -> None:
    """Send llama.cpp's, ggml's and libmtmd's log through the shim's per-thread router."""
    lib.lcpp_log_set_sink(lib.lcpp_on_log_line)
    lib.llama_log_set(lib.lcpp_log_route, ffi.NULL)  # ggml's too
    lib.mtmd_helper_log_set(lib.lcpp_log_route, ffi.NULL)  # libmtmd keeps its own
    atexit.register(lib.lcpp_log_set_sink, ffi.NULL)  # no calls into a finalising interpreter


def sync_log_level() -> None:
    """Let through to ``logging`` only the lines the ``llamacpp_native`` logger would show.

    Read by ``set_verbose`` and at each model load and context creation: lines below the logger's level then
    never leave the shim (llama.cpp logs dozens of debug lines per decode).
    """
    level = logger.getEffectiveLevel()
    wanted = [ggml for ggml, py in _LEVELS.items() if py >= level]
    lib.lcpp_log_set_sink_level(min(wanted) if wanted else lib.GGML_LOG_LEVEL_CONT)


_route_log()
sync_log_level()


def ensure_backend() -> None:
    """Initialise llama.cpp's backend exactly once per process."""
    global _initialised
    if _initialised:
        return
    with _init_lock:
        if _initialised:
            return
        lib.llama_backend_init()
        _initialised = True


def set_verbose(verbose: bool) -> None:
    """Show llama.cpp's informational output (``True``) or only warnings and errors.

    llama.cpp's debug lines stay at ``logging.DEBUG``: set the ``llamacpp_native``
    logger's level yourself to see them (it is read again at each model load and context creation).
    """
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    sync_log_level()
    if verbose and not logging.getLogger().handlers:
        logging.basicConfig(format="%(name)s: %(message)s")


def _read_log(mark: int, min_level: int) -> str:
    text = lib.lcpp_log_read(mark, min_level)
    return "" if text == ffi.NULL else _take_log(text)


def _take_log(text: Any) -> str:
    """The text of a string ``lcpp_log_read`` returned, which is then freed."""
    try:
        return str(ffi.string(text).decode("utf-8", "replace"))
    finally:
        lib.lcpp_string_free(text)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class CallLog:
    """What llama.cpp logs on this thread inside a ``with`` block: its reason when a call fails.

    llama.cpp, ggml and libmtmd log on the thread that makes a call, and the shim keeps
    each thread's lines apart, so these are the block's own calls' lines even while
    other threads fail at the same time.  Blocks nest (an outer block sees the inner
    one's lines too)::

        with CallLog() as log:
            handle = lib.llama_model_load_from_file(path, params)
        if handle == ffi.NULL:
            raise ModelLoadError(f"failed to load model {path}: {log.reason()}")
    """

    __slots__ = ("_errors", "_keep_lines", "_mark", "lines")

    def __init__(self, keep_lines: bool = False) -> None:
        self.lines: list[str] = []
        """With ``keep_lines``: every line at any level, filled when the block ends."""
        self._keep_lines = keep_lines
        self._mark: int | None = None
        self._errors = ""

    def __enter__(self) -> CallLog:
        if self._mark is not None:
            raise RuntimeError("this CallLog is already open")
        self._mark = int(lib.lcpp_log_begin())
        return self

    def __exit__(self, *exc_info: object) -> None:
        mark, self._mark = self._mark, None
        assert mark is not None
        try:
            errors = lib.lcpp_log_read(mark, lib.GGML_LOG_LEVEL_ERROR)
            if errors != ffi.NULL:  # the usual case, a call that logged no error, costs no more calls
                self._errors = _one_line(_take_log(errors))
            if self._keep_lines:
                self.lines.extend(_read_log(mark, lib.GGML_LOG_LEVEL_NONE).splitlines())
        finally:
            lib.lcpp_log_end()

    @property
    def errors(self) -> str:
        """llama.cpp's error lines in the block so far (after it: in the whole block), on one line."""
        if self._mark is not None:
            return _one_line(_read_log(self._mark, lib.GGML_LOG_LEVEL_ERROR))
        return self._errors

    def reason(self, default: str = "llama.cpp gave no reason") -> str:
        """``errors``, or ``default`` when llama.cpp logged none."""
        return self.errors or default


@contextlib.contextmanager
def capture_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines (every level) emitted by this thread inside the block.

    Used to read what llama.cpp reports only in its log: where layers and buffers went.
    The list is filled when the block ends.
    """
    with CallLog(keep_lines=True) as log:
        yield log.lines


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
