"""Generate the C source of the cffi API-mode extension ``llamacpp_native._llama_cffi``.

Usage: ``python gen_cffi.py CDEF_FILE OUTPUT_C``.  CMake compiles the output, so the
compiler checks every declaration in the cdef against the real llama.h.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cffi

MODULE_NAME = "llamacpp_native._llama_cffi"
PREAMBLE = '#include "llama.h"\n#include "mtmd.h"\n#include "mtmd-helper.h"\n#include "ggml-rpc.h"\n#include "lcpp_shim.h"\n'


def generate(cdef_file: Path, output_c: Path) -> None:
    """Write the extension's C source for the declarations in ``cdef_file``."""
    ffi = cffi.FFI()
    ffi.cdef(cdef_file.read_text())
    ffi.set_source(MODULE_NAME, PREAMBLE)
    ffi.emit_c_code(str(output_c))


if __name__ == "__main__":
    generate(Path(sys.argv[1]), Path(sys.argv[2]))
