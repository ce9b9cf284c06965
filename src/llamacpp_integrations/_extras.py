"""Clear import errors for integrations whose optional dependencies are missing."""

from __future__ import annotations

import importlib.util


def require_extra(extra: str, *modules: str) -> None:
    """Raise ``ImportError`` naming the pip extra when any of ``modules`` is not installed."""
    missing = [name for name in modules if not _installed(name)]
    if missing:
        raise ImportError(
            f"this integration needs {', '.join(missing)}, which the '{extra}' extra installs: "
            f"pip install 'llamacpp-integrations[{extra}]'",
            name=missing[0],
        )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False
