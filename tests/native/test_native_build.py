"""The default build is safe on every x86-64 CPU: no AMX kernels unless a user opts in.

ggml's AMX kernels crash on the first decode on Intel AMX hosts (llama.cpp
#20824), and ``-march=native`` would compile them in there.  These checks hold on
any machine, with or without AMX.
"""

from __future__ import annotations

import platform
import shutil
import subprocess

import pytest

import llamacpp_native
from llamacpp_native.binding._library import NATIVE_DIR

X86 = platform.machine().lower() in {"x86_64", "amd64", "i686", "i386"}


def test_the_build_records_that_amx_kernels_are_off() -> None:
    assert llamacpp_native.build_info()["amx_kernels"] is False


@pytest.mark.skipif(not X86, reason="AMX is an x86 extension")
def test_the_cpu_backend_is_compiled_with_amx_disabled() -> None:
    options = llamacpp_native.build_info()["ggml_cpu_compile_options"]
    assert {"-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"} <= set(options.split(";")), options


def test_llama_cpp_reports_no_amx_backend() -> None:
    assert "AMX" not in llamacpp_native.system_info()


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_the_cpu_backend_holds_no_amx_tile_instructions() -> None:
    libraries = sorted(NATIVE_DIR.glob("libggml-cpu*.so"))
    assert libraries, f"no libggml-cpu in {NATIVE_DIR}"
    for library in libraries:
        listing = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True, check=True)
        assert "ldtilecfg" not in listing.stdout, f"{library.name} holds AMX tile instructions"
