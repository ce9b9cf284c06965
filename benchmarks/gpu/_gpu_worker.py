"""``benchmarks/_worker.py`` with layers on the GPU: the same measuring code, run by ``gpu_bench.py``.

Usage (internal): ``python _gpu_worker.py CONFIG_JSON``; prints one JSON object on stdout.
``_worker.py`` loads ``llamacpp_native.Llama`` from the package at each load; here
that name is a subclass whose ``n_gpu_layers`` defaults to the config's
``n_gpu_layers`` (-1: all), so every measurement of ``_worker.py`` runs unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _worker  # noqa: E402

import llamacpp_native  # noqa: E402


def offloaded(n_gpu_layers: int) -> type[llamacpp_native.Llama]:
    """``Llama`` with ``n_gpu_layers`` as its default."""

    class Offloaded(llamacpp_native.Llama):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("n_gpu_layers", n_gpu_layers)
            super().__init__(*args, **kwargs)

    return Offloaded


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    llamacpp_native.Llama = offloaded(int(config.get("n_gpu_layers", -1)))  # type: ignore[misc]
    return _worker.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
