"""Per-call errors: llama.cpp's reason comes from the failing call's own thread, and fd 2 is left alone.

The shim routes llama.cpp's, ggml's and libmtmd's log per thread: a ``CallLog``
holds what its thread logged inside the block, and every line still reaches the
``llamacpp_native`` logger.  Nothing redirects or reads the process's stderr.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from llamacpp_native import GrammarError, Llama, Model, ModelLoadError
from llamacpp_native.binding import sampling
from llamacpp_native.binding._library import CallLog, capture_log
from llamacpp_native.grammar.gbnf import json_schema_conversion
from tiny_models import alien_model


def test_a_failed_load_quotes_llama_cpps_reason_and_still_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    path = alien_model(tmp_path / "alien.gguf", "alien-logged")
    with caplog.at_level(logging.ERROR, logger="llamacpp_native"), pytest.raises(ModelLoadError) as caught:
        Model(path)
    assert "unknown model architecture: 'alien-logged'" in str(caught.value)
    errors = [r for r in caplog.records if r.name == "llamacpp_native" and r.levelno == logging.ERROR]
    logged = [record.getMessage() for record in errors]
    assert any("unknown model architecture: 'alien-logged'" in message for message in logged)
    assert capfd.readouterr().err == ""


def test_a_call_log_holds_only_its_blocks_lines_and_nests(tmp_path: Path) -> None:
    path = alien_model(tmp_path / "nested.gguf", "alien-nested")
    with capture_log() as outer_lines:
        with CallLog() as before:
            pass
        with CallLog() as inner:
            with pytest.raises(ModelLoadError):
                Model(path)
            assert "alien-nested" in inner.errors  # readable inside the block too
    assert before.errors == ""
    assert "unknown model architecture: 'alien-nested'" in inner.errors
    assert "\n" not in inner.errors
    assert any("alien-nested" in line for line in outer_lines)
    with CallLog() as after:
        pass
    assert after.errors == "" and after.reason("none") == "none"


def test_a_call_log_on_another_thread_does_not_see_this_threads_errors(tmp_path: Path) -> None:
    path = alien_model(tmp_path / "elsewhere.gguf", "alien-elsewhere")
    opened, failed = threading.Event(), threading.Event()
    seen: list[str] = []

    def watch() -> None:
        with CallLog() as log:
            opened.set()
            failed.wait(timeout=60)
        seen.append(log.errors)

    watcher = threading.Thread(target=watch)
    watcher.start()
    opened.wait(timeout=60)
    with pytest.raises(ModelLoadError, match="alien-elsewhere"):
        Model(path)
    failed.set()
    watcher.join(timeout=60)
    assert seen == [""]


def test_the_stock_grammar_sampler_reports_a_syntax_error_without_printing_it(
    llama: Llama, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """llama.cpp's own parser prints syntax errors to stderr; the shim's run of it reports them."""
    monkeypatch.setattr(sampling, "GRAMMAR_SEARCH", "llama.cpp")
    with pytest.raises(GrammarError, match=r"expecting newline or end \(line 1"):
        llama.create_completion("x", grammar="root ::= snake_case", max_tokens=2)
    with pytest.raises(GrammarError, match="left recursion detected"):
        llama.create_completion("x", grammar='root ::= x\nx ::= x "a"', max_tokens=2)
    assert capfd.readouterr().err == ""


def test_schema_conversion_leaves_fd_2_to_other_threads(capfd: pytest.CaptureFixture[str]) -> None:
    """While patterns llama.cpp warns about are converted, fd 2 stays the same file and another
    thread's writes to it arrive, in order; the converter's warning does not."""
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?!a)b$"}}}
    fd2 = os.fstat(2)
    done = threading.Event()
    changes: list[os.stat_result] = []
    written: list[str] = []

    def write() -> None:
        i = 0
        while not done.is_set() or i < 20:
            now = os.fstat(2)
            if (now.st_dev, now.st_ino) != (fd2.st_dev, fd2.st_ino):
                changes.append(now)
            marker = f"<marker {i}>\n"
            os.write(2, marker.encode())
            written.append(marker)
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(200):
            assert json_schema_conversion(schema).warnings
    finally:
        done.set()
        writer.join(timeout=60)
    assert changes == []
    err = capfd.readouterr().err
    assert err == "".join(written)
    assert "JSON schema conversion was incomplete" not in err


def test_the_logger_gets_the_levels_it_asks_for_and_no_more(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Lines below the logger's level stay in the shim; the level is read again at each model load."""
    native_logger = logging.getLogger("llamacpp_native")
    before = native_logger.level
    try:
        native_logger.setLevel(logging.DEBUG)
        with caplog.at_level(logging.DEBUG, logger="llamacpp_native"), Model(model_path):
            pass
        assert any(r.levelno == logging.DEBUG for r in caplog.records if r.name == "llamacpp_native")
        caplog.clear()
        native_logger.setLevel(logging.WARNING)
        with caplog.at_level(logging.DEBUG), Model(model_path):  # the root takes every level that arrives
            pass
        assert all(r.levelno >= logging.WARNING for r in caplog.records if r.name == "llamacpp_native")
    finally:
        native_logger.setLevel(before)
        Model(model_path).close()  # the sink follows the restored level
