"""Run llama.cpp's server test suite against llama-server or against our server.

The suite is read from the pinned llama.cpp source in the cache and copied to a scratch
directory (nothing of it is kept in this repository). ``suite_plugin.py`` points every
server preset at one local model file, and ``fake_llama_server.py`` stands in for the
llama-server binary when ``--server ours``.

    python benchmarks/llama_server_suite/run_suite.py run --server llama
    python benchmarks/llama_server_suite/run_suite.py run --server ours
    python benchmarks/llama_server_suite/run_suite.py compare

``run`` runs one test file at a time (``--files test_basic.py ...`` picks some) and
writes a JUnit XML file per test file under ``--out``/<server>/; ``compare`` reads both
and prints the counts and every test that passes on llama-server but not on ours, with
the first line of its failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "llamacpp-integrations"
PINNED_SUITE = CACHE / "llama.cpp-0.3.36-832db0699007" / "tools" / "server" / "tests"
LLAMA_SERVER = CACHE / "reference-build" / "bin" / "llama-server"

# Out of scope for our server (see README.md here): router mode, MCP servers, the
# built-in tools, the web UI's CORS proxy.
OUT_OF_SCOPE = {
    "test_router.py": "router mode",
    "test_mcp_servers.py": "MCP servers",
    "test_tools_builtin.py": "built-in tools",
    "test_proxy.py": "the web UI's CORS proxy",
}


def default_model() -> str:
    from llamacpp_integrations.models import default_model_path

    return str(default_model_path())


def prepare(scratch: Path) -> Path:
    """A fresh copy of the pinned suite under ``scratch``; returns its tests directory.

    The copy keeps the tree's layout (``tools/server/tests``), with ``models`` and
    ``tools/mtmd`` linked to the pinned tree, since tests open ``../../../models/templates``
    and ``../../../tools/mtmd`` files."""
    if not PINNED_SUITE.is_dir():
        sys.exit(f"the pinned suite is missing: {PINNED_SUITE}")
    root = PINNED_SUITE.parents[2]
    if scratch.exists():
        shutil.rmtree(scratch)
    tests = scratch / "tools" / "server" / "tests"
    shutil.copytree(PINNED_SUITE, tests, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
    (tests / "tmp").mkdir()
    (scratch / "models").symlink_to(root / "models")
    (scratch / "tools" / "mtmd").symlink_to(root / "tools" / "mtmd")
    shim = scratch / "ours-llama-server"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_llama_server.py"}" "$@"\n')
    shim.chmod(0o755)
    return tests


def run(args: argparse.Namespace) -> int:
    scratch = Path(args.scratch) / args.server
    tests = prepare(scratch)
    binary = LLAMA_SERVER if args.server == "llama" else scratch / "ours-llama-server"
    out = Path(args.out) / args.server
    out.mkdir(parents=True, exist_ok=True)
    files = args.files or sorted(p.name for p in (tests / "unit").glob("test_*.py"))
    env = {
        **os.environ,
        "LLAMA_SERVER_BIN_PATH": str(binary),
        "SUITE_DIR": str(tests),
        "SUITE_MODEL_FILE": args.model or default_model(),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PORT": str(args.port),
    }
    durations = {}
    for name in files:
        if name in OUT_OF_SCOPE and not args.include_out_of_scope:
            print(f"== {name}: skipped, out of scope ({OUT_OF_SCOPE[name]})", flush=True)
            continue
        command = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "suite_plugin",
            f"--timeout={args.timeout}", "-m", args.marks, "-q", "-rN",
            f"--junitxml={out / (name + '.xml')}", f"unit/{name}",
        ]  # fmt: skip
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        log = out / (name + ".log")
        with log.open("w") as handle:
            subprocess.run(command, cwd=tests, env=env, stdout=handle, stderr=subprocess.STDOUT)
        durations[name] = round(time.monotonic() - started, 1)
        print(f"   {durations[name]} s, log {log}", flush=True)
    (out / "durations.json").write_text(json.dumps(durations, indent=1))
    return 0


def outcomes(folder: Path) -> dict[str, tuple[str, str]]:
    """test id -> (passed / failed / skipped, the first line of the failure)."""
    found: dict[str, tuple[str, str]] = {}
    for xml in sorted(folder.glob("*.xml")):
        for case in ET.parse(xml).getroot().iter("testcase"):
            test = f"{case.get('classname')}::{case.get('name')}"
            state, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                element = case.find(tag)
                if element is not None:
                    state = "skipped" if tag == "skipped" else "failed"
                    message = (element.get("message") or element.text or "").strip().splitlines()
                    message = message[0][:300] if message else ""
                    break
            found[test] = (state, message)
    return found


def compare(args: argparse.Namespace) -> int:
    llama = outcomes(Path(args.out) / "llama")
    ours = outcomes(Path(args.out) / "ours")
    files = {t.split("::")[0] for t in ours}  # only the test files both runs reached
    ran = [t for t in llama if llama[t][0] != "skipped" and t.split("::")[0] in files]
    llama_passed = [t for t in ran if llama[t][0] == "passed"]
    ours_passed = [t for t in ran if ours.get(t, ("missing",))[0] == "passed"]
    regressions = [t for t in llama_passed if ours.get(t, ("missing",))[0] != "passed"]
    only_ours = [t for t in ours_passed if t not in llama_passed]
    print(f"ran {len(ran)}, llama-server passed {len(llama_passed)}, ours passed {len(ours_passed)}")
    print(f"pass on llama-server, not on ours: {len(regressions)}")
    for test in regressions:
        state, message = ours.get(test, ("missing", ""))
        print(f"  {test}  [{state}] {message}")
    print(f"pass on ours, not on llama-server: {len(only_ours)}")
    for test in only_ours:
        print(f"  {test}  [{llama[test][0]}] {llama[test][1]}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="run the suite against one server")
    run_parser.add_argument("--server", choices=("llama", "ours"), required=True)
    run_parser.add_argument("--files", nargs="*", help="test files (default: all in scope)")
    run_parser.add_argument("--model", help="the model every preset loads (default: the project's default)")
    run_parser.add_argument("--timeout", type=int, default=120, help="seconds per test")
    run_parser.add_argument("--marks", default="not slow", help="pytest -m expression")
    run_parser.add_argument("--port", type=int, default=18480)
    run_parser.add_argument("--scratch", default="/tmp/llama_server_suite")
    run_parser.add_argument("--include-out-of-scope", action="store_true")
    for p in (run_parser, sub.add_parser("compare", help="compare the two runs")):
        p.add_argument("--out", default="/tmp/llama_server_suite/results")
    args = parser.parse_args()
    return run(args) if args.action == "run" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
