#!/usr/bin/env bash
# Build the CUDA variant of the wheel for one GPU architecture, as a compile check.
#
#   build_tools/build_cuda.sh [--arch 90] [--wheel-dir dist/cuda-sm90] [--fetch-cublas]
#
# It builds in a build directory of its own (build/cuda-smARCH), so the CPU build
# and an editable install are never touched, and leaves the wheel in --wheel-dir.
# A GPU is not needed to compile.  What it needs:
#   - nvcc, found as $CUDA_HOME/bin/nvcc (default: /usr/local/cuda, else the newest
#     /usr/local/cuda-X.Y);
#   - cuBLAS headers and libraries.  A full toolkit has them.  A toolkit assembled
#     from NVIDIA's Python wheels does not: --fetch-cublas downloads the matching
#     `nvidia-cublas` wheel with pip into build/cuda-deps and points CMake at it
#     (or set CUBLAS_PREFIX to a directory with include/cublas_v2.h and lib/);
#   - the driver library libcuda.so (or the toolkit's stub of it) for ggml's
#     virtual-memory pool.  Where neither exists, the build sets
#     -DGGML_CUDA_NO_VMM=ON, which links no driver library and makes ggml use its
#     plain cudaMalloc pool instead.
# Extra CMake arguments can be passed in CMAKE_ARGS; CMAKE_BUILD_PARALLEL_LEVEL
# sets the number of compile jobs (default: the number of CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=90
wheel_dir=""
fetch_cublas=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --wheel-dir) wheel_dir="$2"; shift 2 ;;
    --fetch-cublas) fetch_cublas=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_cuda.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
build_dir="build/cuda-sm${arch}"
wheel_dir="${wheel_dir:-dist/cuda-sm${arch}}"

# --- the toolkit ---
if [[ -z "${CUDA_HOME:-}" ]]; then
  if [[ -x /usr/local/cuda/bin/nvcc ]]; then
    CUDA_HOME=/usr/local/cuda
  else
    CUDA_HOME=$(ls -d /usr/local/cuda-*/ 2>/dev/null | sort -V | tail -n 1)
    CUDA_HOME=${CUDA_HOME%/}
  fi
fi
nvcc="${CUDA_HOME}/bin/nvcc"
if [[ ! -x "$nvcc" ]]; then
  echo "build_cuda.sh: no nvcc at '${nvcc}'; set CUDA_HOME to a CUDA toolkit" >&2
  exit 1
fi
cuda_version=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
cuda_major=${cuda_version%%.*}
echo "nvcc: ${nvcc} (CUDA ${cuda_version})"

cmake_args=(
  "-DGGML_CUDA=on"
  "-DCMAKE_CUDA_ARCHITECTURES=${arch}"
  "-DCMAKE_CUDA_COMPILER=${nvcc}"
  "-DCUDAToolkit_ROOT=${CUDA_HOME}"
)
if command -v ccache >/dev/null; then
  cmake_args+=("-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache")
fi

# --- cuBLAS ---
if [[ ! -e "${CUDA_HOME}/include/cublas_v2.h" ]]; then
  if [[ -z "${CUBLAS_PREFIX:-}" && "$fetch_cublas" == 1 ]]; then
    deps="build/cuda-deps/cublas-${cuda_version}"
    if [[ ! -e "${deps}/include/cublas_v2.h" ]]; then
      mkdir -p "${deps}/wheel"
      # The cuBLAS release that shipped with this toolkit's major.minor version.
      python -m pip download --no-deps -q -d "${deps}/wheel" \
        "nvidia-cublas>=${cuda_version},<${cuda_major}.$(( ${cuda_version#*.} + 1 ))"
      python -m zipfile -e "${deps}"/wheel/nvidia_cublas-*.whl "${deps}/wheel/unpacked"
      mkdir -p "${deps}/include" "${deps}/lib"
      cp "${deps}/wheel/unpacked/nvidia/cu${cuda_major}/include/"*.h "${deps}/include/"
      cp "${deps}/wheel/unpacked/nvidia/cu${cuda_major}/lib/"libcublas*.so.* "${deps}/lib/"
      rm -rf "${deps}/wheel"
    fi
    CUBLAS_PREFIX="${deps}"
  fi
  if [[ -z "${CUBLAS_PREFIX:-}" ]]; then
    echo "build_cuda.sh: ${CUDA_HOME} has no cuBLAS (include/cublas_v2.h);" \
         "pass --fetch-cublas or set CUBLAS_PREFIX" >&2
    exit 1
  fi
  CUBLAS_PREFIX=$(cd "$CUBLAS_PREFIX" && pwd)
  # The wheels ship only versioned sonames; the linker wants the plain names.
  for lib in cublas cublasLt; do
    so=$(ls "${CUBLAS_PREFIX}/lib/lib${lib}.so."* | head -n 1)
    ln -sf "$(basename "$so")" "${CUBLAS_PREFIX}/lib/lib${lib}.so"
  done
  echo "cuBLAS: ${CUBLAS_PREFIX}"
  cmake_args+=(
    "-DCUDA_cublas_LIBRARY=${CUBLAS_PREFIX}/lib/libcublas.so"
    "-DCUDA_cublasLt_LIBRARY=${CUBLAS_PREFIX}/lib/libcublasLt.so"
    "-DCMAKE_CUDA_FLAGS=-I${CUBLAS_PREFIX}/include"
  )
fi

# --- the driver library, for the VMM pool ---
driver=""
for candidate in "${CUDA_HOME}/lib64/stubs/libcuda.so" "${CUDA_HOME}/lib/stubs/libcuda.so" \
                 /usr/lib/x86_64-linux-gnu/libcuda.so /usr/lib64/libcuda.so; do
  if [[ -e "$candidate" ]]; then driver="$candidate"; break; fi
done
if [[ -z "$driver" ]]; then
  echo "driver library: none (no libcuda.so, no stub); building with -DGGML_CUDA_NO_VMM=ON"
  cmake_args+=("-DGGML_CUDA_NO_VMM=ON")
else
  echo "driver library: ${driver}"
fi

export CMAKE_ARGS="${cmake_args[*]} ${CMAKE_ARGS:-}"
export SKBUILD_BUILD_DIR="${build_dir}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
echo "CMAKE_ARGS=${CMAKE_ARGS}"
echo "build dir: ${build_dir}; wheel dir: ${wheel_dir}; jobs: ${CMAKE_BUILD_PARALLEL_LEVEL}"
start=$(date +%s)
python -m pip wheel . --no-build-isolation --no-deps -w "${wheel_dir}" -v
echo "built in $(( $(date +%s) - start )) s: $(ls "${wheel_dir}"/*.whl)"
