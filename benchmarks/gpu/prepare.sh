#!/usr/bin/env bash
# Gather what the GPU kit needs on a device machine with no network, into one folder
# git ignores (benchmarks/gpu/carry/), here, where the package registries answer:
#
#   benchmarks/gpu/prepare.sh            # then run the kit: see benchmarks/gpu/README.md
#
#   carry/wheels/          cp312 manylinux wheels of the Python packages the device lacks
#                          (the server's, cffi, gguf, pytest-asyncio, openai...), with their
#                          dependencies, and requirements.txt naming the top-level ones
#   carry/llama.cpp.tar.gz the pinned llama.cpp tree, trimmed to what our build and the
#                          reference tools need (no docs/, tests/, examples/, benches/,
#                          models/ but one vocabulary, no web-UI sources)
#   carry/project.tar.gz   `git archive HEAD`: the package is built from the commit, not
#                          from whatever is half-edited in the working tree
#   carry/MANIFEST         what was gathered, from which commit, and the sizes
#
# The whole working tree travels with each device call (64 MiB at most, carried paths
# included): the script prints both sizes and fails if they pass the limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
carry=benchmarks/gpu/carry
python=${PYTHON:-python3}
limit_mib=64

# The top-level packages, at the versions this project's CPU suite runs with
# (2026-12-04); pip adds their dependencies for CPython 3.12 on manylinux x86-64.
packages=(
  "cffi==2.0.0" "pycparser==3.0"
  "fastapi==0.165.0" "starlette==1.10.0" "uvicorn==0.55.0" "sse-starlette==3.7.1"
  "pydantic==2.13.4" "pydantic-core==2.46.4" "pydantic-settings==2.14.1"
  "jsonschema==4.26.0" "gguf==0.19.0"
  "pytest-asyncio==1.5.0" "pytest-timeout==2.4.0" "openai==3.60.0" "httpx==0.29.0"
)

if ! git check-ignore -q "$carry/x"; then
  echo "prepare.sh: $carry/ is not ignored by git (add 'benchmarks/gpu/carry/' to .gitignore)" >&2
  exit 1
fi
if [[ -n "$(git status --porcelain -- benchmarks/gpu tests/gpu benchmarks/*.py)" ]]; then
  echo "prepare.sh: note: uncommitted changes under benchmarks/ or tests/gpu; the kit runs them from" \
       "the working tree, but builds the package from HEAD ($(git rev-parse --short HEAD))" >&2
fi
rm -rf "$carry"
mkdir -p "$carry/wheels"

echo "== wheels (CPython 3.12, manylinux x86-64)"
"$python" -m pip download -q --disable-pip-version-check --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$carry/wheels" "${packages[@]}"
printf '%s\n' "${packages[@]}" >"$carry/wheels/requirements.txt"
ls "$carry/wheels" | sed 's/^/  /'

echo "== llama.cpp (the pinned tree, trimmed)"
tree=$("$python" build_tools/fetch_llama_cpp.py)
echo "  from $tree"
"$python" - "$tree" "$carry/llama.cpp.tar.gz" <<'PY'
"""Tar the pinned tree without what neither our build nor the reference tools read."""
import sys
import tarfile
from pathlib import Path

tree, out = Path(sys.argv[1]), sys.argv[2]
DROP = {"docs", "tests", "examples", "benches", "media", "pocs", "app", ".github", ".devops", "ci",
        "skills", "requirements", "conversion", "licenses-unused"}
KEEP_MODELS = {"ggml-vocab-llama-spm.gguf"}
DROP_UNDER = ("tools/ui/src", "tools/ui/static", "tools/ui/tests", "tools/ui/scripts",
              "tools/ui/package-lock.json", "tools/server/tests", "tools/server/bench",
              "tools/mtmd/test-", "tools/tts", "tools/cvector-generator", "tools/imatrix", "tools/perplexity")


def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    rel = info.name.split("/", 1)[1] if "/" in info.name else ""
    top = rel.split("/", 1)[0]
    if top in DROP or rel.startswith(DROP_UNDER):
        return None
    if top == "models" and "/" in rel and rel.split("/", 1)[1] not in KEEP_MODELS:
        return None
    return info


with tarfile.open(out, "w:gz", compresslevel=6) as archive:
    archive.add(tree, arcname="llama.cpp", filter=keep)
PY

echo "== the project at HEAD"
git archive --format=tar.gz --prefix=project/ -o "$carry/project.tar.gz" HEAD

{
  echo "prepared $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
  echo "commit $(git rev-parse HEAD)"
  echo "llama.cpp tree $tree"
  du -b "$carry"/*.tar.gz "$carry"/wheels/* | awk '{printf "%10d  %s\n", $1, $2}'
} >"$carry/MANIFEST"

carry_bytes=$(du -sb "$carry" | cut -f1)
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
total=$(( carry_bytes + tree_bytes ))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "== sizes"
echo "  $carry: $(mib "$carry_bytes") (wheels $(mib "$(du -sb "$carry/wheels" | cut -f1)"), llama.cpp" \
     "$(mib "$(stat -c %s "$carry/llama.cpp.tar.gz")"), project $(mib "$(stat -c %s "$carry/project.tar.gz")"))"
echo "  working tree that travels (tracked + untracked, not ignored): $(mib "$tree_bytes")"
echo "  together: $(mib "$total") of the device tool's ${limit_mib} MiB"
if (( total > limit_mib * 1048576 )); then
  echo "prepare.sh: over the ${limit_mib} MiB the device tool carries" >&2
  exit 1
fi
