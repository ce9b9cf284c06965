"""Loading GGUF files: what a model says about itself, and clear errors for bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from llamacpp_native import Llama, Model, ModelLoadError, ModelNotFoundError

# -- metadata --------------------------------------------------------------------------------


def test_architecture_is_gemma3(llama: Llama) -> None:
    assert llama.model.architecture == "gemma3"
    assert llama.model.metadata["general.architecture"] == "gemma3"


def test_sizes_agree_with_the_gguf_metadata(llama: Llama) -> None:
    model = llama.model
    assert model.n_embd == 640
    assert model.n_embd == int(model.metadata["gemma3.embedding_length"])
    assert model.n_ctx_train == int(model.metadata["gemma3.context_length"]) == 32768
    assert model.n_layer == int(model.metadata["gemma3.block_count"])


def test_description_names_architecture_size_and_quantisation(llama: Llama) -> None:
    description = llama.model.description
    assert description.startswith("gemma3")
    assert "270M" in description
    assert "Q4_K" in description


def test_parameter_count_and_file_size_are_plausible(llama: Llama, model_path: Path) -> None:
    model = llama.model
    assert 200e6 < model.n_params < 350e6
    assert 0 < model.size_bytes <= model_path.stat().st_size
    assert not model.has_encoder


def test_name_comes_from_the_metadata(llama: Llama) -> None:
    assert llama.model.name == llama.model.metadata["general.name"]


def test_the_context_window_is_what_was_asked_for(llama: Llama) -> None:
    assert llama.n_ctx == 2048


# -- bad files ----------------------------------------------------------------------------------


def test_missing_file_is_model_not_found_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.gguf"
    with pytest.raises(ModelNotFoundError, match="not found") as caught:
        Model(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)


def test_directory_is_model_not_found_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not a file") as caught:
        Model(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_empty_file_is_a_load_error_saying_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty") as caught:
        Model(path)
    assert str(path) in str(caught.value)


def test_non_gguf_file_is_a_load_error_saying_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"PK\x03\x04 this is a zip archive, not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file") as caught:
        Model(path)
    assert str(path) in str(caught.value)


def test_truncated_gguf_is_a_load_error_naming_the_path(tmp_path: Path, model_path: Path) -> None:
    path = tmp_path / "truncated.gguf"
    with model_path.open("rb") as source:
        path.write_bytes(source.read(1 << 20))
    with pytest.raises(ModelLoadError) as caught:
        Model(path)
    assert str(path) in str(caught.value)


def test_gguf_of_unknown_architecture_is_a_load_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "alien.gguf"
    writer = gguf.GGUFWriter(str(path), "nonexistent-arch")
    writer.add_tensor("weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="nonexistent-arch") as caught:
        Model(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"GGUF", id="magic-only"),
        pytest.param(b"GGUF" + struct.pack("<IQQ", 999, 0, 0), id="future-version"),
        pytest.param(b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62), id="absurd-counts"),
        pytest.param(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**60), id="absurd-string-length"),
    ],
)
def test_corrupt_gguf_header_is_a_load_error_not_a_crash(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(header)
    with pytest.raises(ModelLoadError) as caught:
        Model(path)
    assert str(path) in str(caught.value)


def test_llama_reports_bad_files_with_the_same_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        Llama(tmp_path / "missing.gguf")


def test_the_shared_model_still_works_after_failed_loads(llama: Llama) -> None:
    result = llama.create_completion("1, 2, 3, 4,", max_tokens=4, temperature=0.0)
    assert isinstance(result, dict)
    assert result["choices"][0]["text"].startswith(" 5")
