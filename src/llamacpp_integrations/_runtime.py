"""What both framework integrations share: loaded models.

Integrations hold no C knowledge; they reach llama.cpp only through
``llamacpp_native.Llama``.  Models are loaded lazily and shared between every
integration object that names the same file with the same load settings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from llamacpp_native import Llama

_cache: dict[tuple[str, tuple[tuple[str, Any], ...]], Llama] = {}
_cache_lock = threading.Lock()


def shared_llama(model_path: str | os.PathLike[str], settings: Mapping[str, Any]) -> Llama:
    """The ``Llama`` for this file and these load settings, loading it on first use."""
    if not model_path:
        raise ValueError("model_path is required: the path of a local .gguf file (nothing is downloaded)")
    # verbose only changes logging, so it does not make a different model
    key = (
        os.path.realpath(model_path),
        tuple(sorted((k, _hashable(v)) for k, v in settings.items() if k != "verbose")),
    )
    with _cache_lock:
        llama = _cache.get(key)
        if llama is None or llama.model.closed:
            llama = Llama(model_path, **settings)
            _cache[key] = llama
        return llama


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value
