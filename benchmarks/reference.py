"""Build or locate the references the benchmark compares against.

* **llama.cpp's own tools** (``llama-bench``, ``llama-completion``, ``llama-batched-bench``,
  ``llama-server``), built from the same pinned llama.cpp source as our package, in a
  separate CMake build under the per-user cache (never in the repository's ``build/``).
  The server is built without its web UI (no npm, no download) and without HTTPS:
  the benchmarks talk to it over loopback HTTP only.
* **llama-cpp-python** (the peer), the pinned release whose sdist carries that
  llama.cpp source, installed into its own virtual environment *without* building
  its llama.cpp: at run time it loads our package's ``libllama.so`` through
  ``LLAMA_CPP_LIB_PATH``, so only the binding differs.  ``langchain-community``
  goes into the same environment for the LangChain comparison, and the requirements
  of llama-cpp-python's ``server`` extra for ``python -m llama_cpp.server``
  (``server_bench.py``).

Both are built once and reused; ``--rebuild`` starts again.  Run this script on its
own to prepare them ahead of a benchmark run (it takes a few minutes on two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "build_tools"))

from fetch_llama_cpp import FetchError, cache_root, download_verified_sdist, load_pin  # noqa: E402

PIN = load_pin()
NATIVE_TOOLS = ("llama-bench", "llama-completion", "llama-batched-bench", "llama-server")
PEER_EXTRAS = ("langchain-community",)
PEER_SERVER_EXTRA = "server"  # llama-cpp-python's extra for ``python -m llama_cpp.server``


class ReferenceError(RuntimeError):
    """A reference could not be built or found."""


def _say(message: str) -> None:
    sys.stderr.write(f"[reference] {message}\n")
    sys.stderr.flush()


def _run(command: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    _say("$ " + " ".join(command))
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise ReferenceError(f"{what} failed (exit {result.returncode}):\n{tail}")


# -- llama.cpp's own tools -------------------------------------------------------------------------
def llama_cpp_source() -> Path:
    """The pinned llama.cpp tree (fetched into the cache by the project's own fetch script)."""
    explicit = os.environ.get("LLAMA_CPP_SOURCE_DIR")
    if explicit:
        return Path(explicit)
    result = subprocess.run(
        [sys.executable, str(REPO / "build_tools" / "fetch_llama_cpp.py")], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise ReferenceError(result.stderr.strip())
    return Path(result.stdout.strip())


def native_build_dir() -> Path:
    """Where the reference tools are built."""
    return cache_root() / "reference-build"


def _stamp(directory: Path) -> Path:
    return directory / ".benchmark-pin"


def _identity() -> str:
    """What a prepared reference was made from: the pin, or the user's own llama.cpp checkout."""
    return os.environ.get("LLAMA_CPP_SOURCE_DIR") or PIN["sha256"]


def _is_current(directory: Path) -> bool:
    """Whether ``directory`` was prepared from the current source."""
    stamp = _stamp(directory)
    return stamp.is_file() and stamp.read_text().strip() == _identity()


def native_tools(
    build: bool = True,
    rebuild: bool = False,
    jobs: int | None = None,
    names: tuple[str, ...] = NATIVE_TOOLS,
) -> dict[str, Path]:
    """Paths of the native tools ``names``, building those missing first (when ``build`` allows).

    Every tool comes from the one build directory; asking for a tool that an earlier
    run did not build adds just that target to it.
    """
    unknown = sorted(set(names) - set(NATIVE_TOOLS))
    if unknown:
        raise ReferenceError(f"unknown llama.cpp tools {unknown}; known: {NATIVE_TOOLS}")
    build_dir = native_build_dir()
    tools = {name: build_dir / "bin" / name for name in names}
    current = _is_current(build_dir)
    if not rebuild and current and all(path.is_file() for path in tools.values()):
        return tools
    if not build:
        missing = ", ".join(name for name, path in tools.items() if not path.is_file()) or "all"
        raise ReferenceError(
            f"llama.cpp's tools are not built yet ({missing}; expected in {build_dir}); "
            "run `python benchmarks/reference.py native`"
        )
    if build_dir.exists() and (rebuild or not current):
        shutil.rmtree(build_dir)  # stale: another pin, or asked to start again
    targets = [name for name, path in tools.items() if rebuild or not current or not path.is_file()]
    source = llama_cpp_source()
    _say(f"building llama.cpp's {', '.join(targets)} from {source}")
    _say(f"into {build_dir} (Release, same defaults as our package; several minutes on 2 cores, once)")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build_dir),
            *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_BUILD_TOOLS=ON",
            "-DLLAMA_BUILD_EXAMPLES=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            # llama-server, for the concurrency benchmark.  Its web UI would come from npm
            # or a download: neither, the server runs with an empty asset table.  No HTTPS
            # (OpenSSL off; this tree has no libcurl option left: LLAMA_CURL is deprecated).
            "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_BUILD_UI=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF",
            "-DLLAMA_BUILD_APP=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_ALL_WARNINGS=OFF",
        ],
        "configuring the reference build",
    )
    jobs = jobs or os.cpu_count() or 2
    _run(
        ["cmake", "--build", str(build_dir), "--target", *targets, f"-j{jobs}"],
        "building the reference tools",
    )
    missing = [str(path) for path in tools.values() if not path.is_file()]
    if missing:
        raise ReferenceError(f"the build finished but these are missing: {missing}")
    _stamp(build_dir).write_text(_identity() + "\n")
    return tools


# -- llama-cpp-python (the peer) ---------------------------------------------------------------------
def our_library_dir() -> Path:
    """The directory holding our package's ``libllama.so`` and ``libggml*.so``."""
    import llamacpp_native._llama_cffi as compiled

    module = Path(compiled.__file__)
    directory = module.parent
    if not (directory / "libllama.so").is_file():
        raise ReferenceError(f"no libllama.so next to {module}; is the package installed (pip install -e .)?")
    return directory


def peer_venv_dir() -> Path:
    """The peer's virtual environment."""
    return cache_root() / "peer-venv"


def peer_python(install: bool = True, rebuild: bool = False) -> Path:
    """The interpreter with llama-cpp-python (on our libraries) and langchain-community."""
    venv = peer_venv_dir()
    python = venv / "bin" / "python"
    if not rebuild and _is_current(venv) and python.is_file():
        return python
    if not install:
        raise ReferenceError(
            f"llama-cpp-python is not installed yet (expected in {venv}); "
            "run `python benchmarks/reference.py peer`"
        )
    if venv.exists() and (rebuild or not _is_current(venv)):
        shutil.rmtree(venv)
    _say(f"creating {venv} for llama-cpp-python {PIN['version']} (without its own llama.cpp build)")
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], "creating the peer venv")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    with tempfile.TemporaryDirectory(prefix="llama-cpp-python-sdist-") as tmp:
        try:
            archive = download_verified_sdist(Path(tmp))
        except FetchError as error:
            raise ReferenceError(str(error)) from None
        # LLAMA_BUILD=OFF: install only the Python package; the library comes from
        # LLAMA_CPP_LIB_PATH at run time (see peer_env).  scikit-build-core comes from
        # the system site-packages, hence no build isolation.
        env = dict(os.environ, CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF")
        _run(
            [*pip, "install", "--no-build-isolation", str(archive)],
            "installing llama-cpp-python",
            env=env,
        )
    _run([*pip, "install", *PEER_EXTRAS], "installing " + ", ".join(PEER_EXTRAS))
    check = subprocess.run(
        [str(python), "-c", "import llama_cpp, sys; sys.stdout.write(llama_cpp.__version__)"],
        env=peer_env(),
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise ReferenceError(f"llama-cpp-python does not import on our libraries:\n{check.stderr[-2000:]}")
    _stamp(venv).write_text(_identity() + "\n")
    return python


def peer_server_requirements(python: Path) -> list[str]:
    """The requirements of llama-cpp-python's ``server`` extra, from its package metadata.

    That metadata is the pinned sdist's own (pip installed the package from it), so
    this is exactly what ``pip install llama-cpp-python[server]`` would add.
    """
    result = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, json, sys; "
            "sys.stdout.write(json.dumps(m.requires('llama_cpp_python') or []))",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ReferenceError(f"cannot read llama-cpp-python's metadata:\n{result.stderr[-2000:]}")
    marker = re.compile(r"""extra\s*==\s*["']""" + re.escape(PEER_SERVER_EXTRA) + r"""["']""")
    requirements = [
        line.split(";", 1)[0].strip()
        for line in json.loads(result.stdout)
        if ";" in line and marker.search(line.split(";", 1)[1])
    ]
    if not requirements:
        raise ReferenceError(f"llama-cpp-python's metadata lists no '{PEER_SERVER_EXTRA}' extra")
    return requirements


def peer_server_python(install: bool = True) -> Path:
    """The peer's interpreter, able to run ``python -m llama_cpp.server`` on our libraries.

    Installs the ``server`` extra's requirements into the peer venv when its app does
    not import yet (pip, into that venv only; llama-cpp-python itself is left alone).
    """
    python = peer_python(install=install)
    probe = [str(python), "-c", "import llama_cpp.server.app"]
    check = subprocess.run(probe, env=peer_env(), capture_output=True, text=True)
    if check.returncode == 0:
        return python
    if not install:
        raise ReferenceError(
            "llama-cpp-python's server does not import in the peer venv "
            f"({(check.stderr.strip().splitlines() or ['?'])[-1]}); "
            "run `python benchmarks/reference.py peer`"
        )
    requirements = peer_server_requirements(python)
    _say(f"installing llama-cpp-python's [{PEER_SERVER_EXTRA}] extra: {', '.join(requirements)}")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "install", *requirements], f"installing llama-cpp-python's [{PEER_SERVER_EXTRA}] extra")
    check = subprocess.run(probe, env=peer_env(), capture_output=True, text=True)
    if check.returncode != 0:
        raise ReferenceError(
            f"llama-cpp-python's server does not import on our libraries:\n{check.stderr[-2000:]}"
        )
    return python


def peer_env() -> dict[str, str]:
    """Environment for the peer: load llama.cpp from our package's directory."""
    return dict(os.environ, LLAMA_CPP_LIB_PATH=str(our_library_dir()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what",
        nargs="?",
        choices=("native", "peer", "all"),
        default="all",
        help="which reference to prepare (default: all)",
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="discard the cached build / venv and start again"
    )
    parser.add_argument(
        "-j", "--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)"
    )
    args = parser.parse_args(argv)
    try:
        if args.what in ("native", "all"):
            for name, path in native_tools(rebuild=args.rebuild, jobs=args.jobs).items():
                sys.stdout.write(f"{name}: {path}\n")
        if args.what in ("peer", "all"):
            sys.stdout.write(f"peer python: {peer_python(rebuild=args.rebuild)}\n")
            peer_server_python()  # its server extra, for server_bench.py
            sys.stdout.write(f"LLAMA_CPP_LIB_PATH={our_library_dir()}\n")
    except ReferenceError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
