#!/usr/bin/env bash
# The GPU kit, on a CUDA machine with no network (the device tool's H200), in one go:
#
#   benchmarks/gpu/run_kit.sh [--layers 16] [--embd 2048] [--budget 575] [--no-bench] [--no-tests]
#                             [--jobs 16] [--build-limit 500] [--cpu]
#
# from the repository root, with benchmarks/gpu/carry/ made by prepare.sh.  --cpu builds
# without CUDA: a dry run of the kit itself on a machine with no GPU (the GPU tests skip).  Stages,
# each timed and logged; a failed stage does not stop the later ones:
#
#   env      the GPU, nvcc, Python, cores
#   site     the carried wheels unpacked into one folder on PYTHONPATH, beside the image's
#            Python (its cmake, ninja, scikit-build-core); a venv made from that Python,
#            itself a venv, would not see them
#   unpack   the trimmed llama.cpp tree and the project at its commit
#   objects  (in the background, from here on) the reference tools' object files
#   model    (in the background) a random-weight llama, F16, --layers x --embd
#   build    the package's CUDA wheel (FlashAttention kernels on, sm_90), then installed
#   tools    llama-bench, llama-batched-bench, llama-server linked to the installed libraries
#   report   the offload report of the benchmark model, all layers on the GPU
#   tests    pytest -m gpu tests/gpu
#   bench    gpu_bench.py: the table
#
# Everything lands in $OUT (the device tool's output folder; default /tmp/kit-out), at
# most 8 files: kit.log (all of it), build.log, tools.log, pytest.log, stages.tsv,
# table.md, results.json.  The last lines printed are the stage times and the table.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

layers=16
embd=2048
budget=575          # seconds for the whole kit; the device tool stops a command at 600
run_bench=1
run_tests=1
jobs=16
cpu_only=0
build_limit=500
while [[ $# -gt 0 ]]; do
  case "$1" in
    --layers) layers="$2"; shift 2 ;;
    --embd) embd="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --no-bench) run_bench=0; shift ;;
    --no-tests) run_tests=0; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    --cpu) cpu_only=1; shift ;;
    --build-limit) build_limit="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_kit.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

export OUT=${OUT:-/tmp/kit-out}
carry=${KIT_CARRY:-$repo/benchmarks/gpu/carry}
work=${KIT_WORK:-/tmp/kit}
mkdir -p "$OUT" "$work"
exec > >(tee -a "$OUT/kit.log") 2>&1
kit_start=$(date +%s)
deadline=$(( kit_start + budget ))
printf 'stage\tstatus\tseconds\n' >"$OUT/stages.tsv"

# CUDA toolkit (the facts measured on the H200 image: /usr/local/cuda-13.0)
cuda=${CUDA_HOME:-}
for candidate in /usr/local/cuda-13.0 /usr/local/cuda; do
  [[ -z "$cuda" && -x "$candidate/bin/nvcc" ]] && cuda=$candidate
done
cuda=${cuda:-/usr/local/cuda-13.0}
export PATH="$cuda/bin:$PATH"
export LD_LIBRARY_PATH="$cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
py=${KIT_PYTHON:-python3}
site=$work/site    # the carried wheels, then our package
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export LLAMA_CPP_SOURCE_DIR=$work/llama.cpp
model=$work/model.gguf
tools=$work/tools

say() { echo "[kit $(date -u +%H:%M:%S) +$(( $(date +%s) - kit_start ))s] $*"; }

# stage NAME LIMIT FUNCTION: run FUNCTION with at most LIMIT seconds (less if the kit's
# budget is nearer), log its time and status; never stops the kit.
stage() {
  local name=$1 limit=$2 fn=$3 left rc started
  left=$(( deadline - $(date +%s) ))
  (( limit > left )) && limit=$left
  if (( limit < 5 )); then
    say "== $name: skipped (the kit's ${budget} s budget is spent)"
    printf '%s\tskipped\t0\n' "$name" >>"$OUT/stages.tsv"
    return 0
  fi
  say "== $name (at most ${limit} s)"
  started=$(date +%s)
  timeout -k 10 "$limit" bash -c "$fn"
  rc=$?
  local seconds=$(( $(date +%s) - started ))
  local status=ok
  (( rc == 124 || rc == 137 )) && status="timeout"
  (( rc != 0 && rc != 124 && rc != 137 )) && status="failed($rc)"
  say "== $name: $status in ${seconds} s"
  printf '%s\t%s\t%s\n' "$name" "$status" "$seconds" >>"$OUT/stages.tsv"
  return 0
}

# ---- the stages (functions run by `bash -c`, hence exported) ----------------------------------
st_env() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm --format=csv || true
  nvcc --version | tail -n 2
  "$py" --version; nproc; free -g | head -n 2; df -h /tmp | tail -n 1
  echo "carry: $(du -sh "$carry" | cut -f1)"; cat "$carry/MANIFEST" 2>/dev/null | head -n 3
}
st_site() {
  set -e
  rm -rf "$site"
  "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --target "$site" "$carry"/wheels/*.whl
  "$py" -c "import cffi, fastapi, pydantic, gguf, pytest_asyncio, openai, numpy, scikit_build_core"
  command -v cmake ninja
  echo "site ok: $(ls "$site" | wc -l) entries"
}
st_unpack() {
  set -e
  local commit
  commit=$(grep -m1 '^commit' "$carry/MANIFEST" || echo "commit ?")
  echo "$commit"
  # KIT_REUSE=1 keeps an earlier unpack of the same commit, and so its build folder
  # (an interrupted dry run then resumes its build); a fresh device machine has none
  if [[ "${KIT_REUSE:-0}" == 1 && "$(cat "$work/project/.kit-commit" 2>/dev/null)" == "$commit" ]]; then
    echo "reusing $work/project and $work/llama.cpp"
    return 0
  fi
  rm -rf "$work/llama.cpp" "$work/project"
  tar xzf "$carry/llama.cpp.tar.gz" -C "$work"
  tar xzf "$carry/project.tar.gz" -C "$work"
  test -f "$LLAMA_CPP_SOURCE_DIR/include/llama.h"
  echo "$commit" >"$work/project/.kit-commit"
}
st_objects() {
  set -e
  cmake -S "$repo/benchmarks/gpu/tools" -B "$work/tools-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_DIR="$LLAMA_CPP_SOURCE_DIR" -DLIB_DIR="$site/llamacpp_native" >"$OUT/tools.log" 2>&1
  nice -n 10 cmake --build "$work/tools-build" --target tool-objects -j 4 >>"$OUT/tools.log" 2>&1
}
st_model() {
  "$py" "$repo/benchmarks/gpu/make_model.py" "$model" --layers "$layers" --embd "$embd"
}
st_build() {
  set -e
  cd "$work/project"
  # FlashAttention's CUDA kernels are on unless -DGGML_CUDA_FA=OFF is passed: it is not
  export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER=$cuda/bin/nvcc -DCUDAToolkit_ROOT=$cuda"
  if (( cpu_only )); then export CMAKE_ARGS=""; fi
  export CMAKE_BUILD_PARALLEL_LEVEL=$jobs
  echo "CMAKE_ARGS=$CMAKE_ARGS LLAMA_CPP_SOURCE_DIR=$LLAMA_CPP_SOURCE_DIR"
  local started=$(date +%s)
  "$py" -m pip wheel . --no-build-isolation --no-deps --no-index -w "$work/dist" -v >"$OUT/build.log" 2>&1 \
    || { tail -n 40 "$OUT/build.log"; exit 1; }
  local wheel
  wheel=$(ls "$work"/dist/*.whl)
  echo "wheel built in $(( $(date +%s) - started )) s: $(basename "$wheel"), $(du -h "$wheel" | cut -f1)" \
       "($(stat -c %s "$wheel") bytes)"
  "$py" -m pip install -q --no-deps --no-index --no-compile --upgrade --target "$site" "$wheel"
  ls -la "$site/llamacpp_native/"*.so | awk '{printf "  %10d  %s\n", $5, $9}'
  cd /
  "$py" -c "import llamacpp_native as n, json; print(json.dumps(n.build_info())[:600])" || true
}
st_tools() {
  set -e
  # configured again (a no-op when the background step did it): it may have failed early
  cmake -S "$repo/benchmarks/gpu/tools" -B "$work/tools-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_DIR="$LLAMA_CPP_SOURCE_DIR" -DLIB_DIR="$site/llamacpp_native" >>"$OUT/tools.log" 2>&1
  cmake --build "$work/tools-build" -j "$jobs" >>"$OUT/tools.log" 2>&1 || { tail -n 30 "$OUT/tools.log"; exit 1; }
  mkdir -p "$tools"
  cp "$work/tools-build/llama-bench" "$work/tools-build/llama-batched-bench" "$work/tools-build/llama-server" "$tools/"
  ldd "$tools/llama-bench" | grep -E 'llama|ggml'
  "$tools/llama-bench" --list-devices 2>&1 | tail -n 3
}
st_report() {
  cd /
  "$py" - "$model" <<'PY'
import sys
from llamacpp_native import Llama

with Llama(sys.argv[1], n_gpu_layers=-1, n_ctx=1024, n_parallel=1) as llm:
    print(llm.offload_report())
    out = llm.create_completion("Hello", max_tokens=8, temperature=0.0)
    print("generated", out["usage"]["completion_tokens"], "tokens")
PY
}
st_tests() {
  cd "$repo"
  # only the plugins the suite uses: the image's own (xdist, cov, benchmark...) stay out
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$py" -m pytest -p pytest_asyncio.plugin -p pytest_timeout \
    -m gpu tests/gpu -q -p no:cacheprovider -o addopts="" -rA >"$OUT/pytest.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/pytest.log"
  return $rc
}
st_bench() {
  cd "$repo"
  "$py" benchmarks/gpu/gpu_bench.py --model "$model" --tools "$tools" --out "$OUT" \
    --deadline $(( deadline - 15 ))
}
export -f say st_env st_site st_unpack st_objects st_model st_build st_tools st_report st_tests st_bench
export repo carry work site py model tools layers embd cuda deadline kit_start budget jobs cpu_only

say "GPU kit: model ${layers} x ${embd}, budget ${budget} s, out $OUT"
stage env 30 st_env
stage site 90 st_site
stage unpack 60 st_unpack

# in the background while the package builds: the tools' objects and the model
say "== objects, model: started in the background"
( s=$(date +%s); timeout 400 bash -c st_objects; rc=$?
  printf 'objects (background)\t%s\t%s\n' "$([[ $rc == 0 ]] && echo ok || echo "failed($rc)")" "$(( $(date +%s) - s ))" >>"$OUT/stages.tsv" ) &
objects_pid=$!
( s=$(date +%s); timeout 120 bash -c st_model; rc=$?
  printf 'model (background)\t%s\t%s\n' "$([[ $rc == 0 ]] && echo ok || echo "failed($rc)")" "$(( $(date +%s) - s ))" >>"$OUT/stages.tsv" ) &
model_pid=$!

stage build "$build_limit" st_build
wait "$objects_pid" 2>/dev/null
stage tools 90 st_tools
wait "$model_pid" 2>/dev/null
stage report 60 st_report
(( run_tests )) && stage tests 150 st_tests
(( run_bench )) && stage bench 400 st_bench

say "== done in $(( $(date +%s) - kit_start )) s"
column -t -s $'\t' "$OUT/stages.tsv" 2>/dev/null || cat "$OUT/stages.tsv"
[[ -f "$OUT/table.md" ]] && { echo; cat "$OUT/table.md"; }
sleep 1   # let tee write the last lines to kit.log
exit 0
