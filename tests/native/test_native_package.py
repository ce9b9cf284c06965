"""The package surface: exports, version, errors and the compiled library."""

from __future__ import annotations

import logging
from importlib.metadata import version

import pytest

import llamacpp_native
from llamacpp_native import Context, Llama, errors


def test_every_name_in_all_is_exported() -> None:
    missing = [name for name in llamacpp_native.__all__ if not hasattr(llamacpp_native, name)]
    assert missing == []
    assert len(set(llamacpp_native.__all__)) == len(llamacpp_native.__all__)


def test_every_public_error_is_exported_and_derives_from_llama_error() -> None:
    classes = [
        getattr(errors, name)
        for name in dir(errors)
        if name.endswith("Error") or name == "GenerationCancelled"
    ]
    for cls in classes:
        assert issubclass(cls, errors.LlamaError)
        assert cls.__name__ in llamacpp_native.__all__


def test_errors_also_derive_from_the_matching_builtin() -> None:
    assert issubclass(errors.ModelNotFoundError, FileNotFoundError)
    assert issubclass(errors.ContextOverflowError, ValueError)
    assert issubclass(errors.GrammarError, ValueError)
    assert issubclass(errors.TokenizeError, ValueError)
    assert issubclass(errors.ClosedError, RuntimeError)


def test_the_version_is_the_installed_distributions() -> None:
    assert llamacpp_native.__version__ == version("llamacpp-integrations")


def test_system_info_describes_the_cpu_backend() -> None:
    assert "CPU" in llamacpp_native.system_info()


def test_llama_cpp_log_lines_reach_the_package_logger_and_not_stderr(
    llama: Llama, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.DEBUG, logger="llamacpp_native"):
        Context(llama.model, n_ctx=64, n_threads=1).close()
    assert any(
        record.name == "llamacpp_native" and "llama_context" in record.getMessage()
        for record in caplog.records
    )
    assert capfd.readouterr().err == ""
