"""Fill-in-the-middle: the prompt is built from the FIM tokens the vocabulary names (never
hard-coded ids), in llama-server's repository-level layout; a model without them is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llamacpp_native import Llama, NotSupportedError
from tiny_models import write_fim_model


@pytest.fixture(scope="module")
def coder(fim_model: tuple[Path, dict[str, int]]) -> Iterator[Llama]:
    with Llama(fim_model[0], n_ctx=512, n_batch=64, n_parallel=2, n_threads=1, seed=1) as instance:
        yield instance


def words(llama: Llama, text: str) -> list[int]:
    return llama.tokenize(text, add_bos=False)


def test_the_vocabulary_names_its_fim_tokens_from_the_metadata(
    coder: Llama, fim_model: tuple[Path, dict[str, int]]
) -> None:
    ids = fim_model[1]
    assert coder.model.vocab.fim._asdict() == ids
    assert min(ids.values()) > 300  # far from 0, where a hard-coded id would point


def test_the_prompt_is_repo_files_current_file_prefix_suffix_middle(
    coder: Llama, fim_model: tuple[Path, dict[str, int]]
) -> None:
    t = fim_model[1]
    tokens = coder.infill_tokens(
        "def add(a, b):\n    ",
        "\n    return total\n",
        prompt="total",
        extra=[{"filename": "util.py", "text": "x = 1"}, {"text": "y = 2"}],
    )
    assert tokens == [
        coder.token_bos(),
        t["rep"], *words(coder, "myproject\n"),
        t["sep"], *words(coder, "util.py\n"), *words(coder, "x = 1"),
        t["sep"], *words(coder, "tmp\n"), *words(coder, "y = 2"),
        t["sep"], *words(coder, "filename\n"),
        t["pre"], *words(coder, "def add(a, b):\n    "), *words(coder, "total"),
        t["suf"], *words(coder, "\n    return total\n"),
        t["mid"],
    ]  # fmt: skip


def test_spm_puts_the_suffix_first(coder: Llama, fim_model: tuple[Path, dict[str, int]]) -> None:
    t = fim_model[1]
    tokens = coder.infill_tokens("a", "b", spm=True)
    head = [coder.token_bos(), t["rep"], *words(coder, "myproject\n"), t["sep"], *words(coder, "filename\n")]
    assert tokens == [*head, t["suf"], *words(coder, "b"), t["pre"], *words(coder, "a"), t["mid"]]


def test_without_repository_tokens_extra_files_are_snippets(tmp_path: Path) -> None:
    path = tmp_path / "no-repo.gguf"
    t = write_fim_model(path, with_repo_tokens=False)
    with Llama(path, n_ctx=256, n_threads=1, n_parallel=1) as llama:
        assert (llama.model.vocab.fim.rep, llama.model.vocab.fim.sep) == (-1, -1)
        tokens = llama.infill_tokens("a", "b", extra=[{"filename": "ignored.py", "text": "c"}])
        snippet = words(llama, "\n\n--- snippet ---\n\n")
        expected = [llama.token_bos(), *snippet, *words(llama, "c")]
        assert tokens == [*expected, t["pre"], *words(llama, "a"), t["suf"], *words(llama, "b"), t["mid"]]


def test_fit_keeps_the_prefixs_end_the_suffixs_start_and_the_last_extra_tokens(coder: Llama) -> None:
    fim = coder.model.vocab.fim
    prefix, suffix = words(coder, "a b " * 60), words(coder, "c d " * 60)  # token ids, as given
    extra = [{"filename": "big.py", "text": "e f " * 400}]
    tokens = coder.infill_tokens(prefix, suffix, prompt="x", extra=extra, fit=True, max_tokens=16)
    n_batch, n_ctx = 64, 512
    kept_prefix = tokens[tokens.index(fim.pre) + 1 : tokens.index(fim.suf)]
    assert kept_prefix == prefix[-3 * (n_batch // 4) :] + words(coder, "x")
    kept_suffix = tokens[tokens.index(fim.suf) + 1 : -1]
    assert kept_suffix == suffix[: n_batch // 4 - (2 + len(words(coder, "x")))]
    uncropped = coder.infill_tokens("", "", extra=extra)
    files = uncropped[1 : uncropped.index(fim.pre)]
    assert tokens[1 : tokens.index(fim.pre)] == files[-(n_ctx - n_batch - 2 * 16) :]


def test_create_completion_with_a_suffix_fills_the_middle(coder: Llama) -> None:
    prompt, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    filled = coder.infill_tokens(prompt, suffix)
    result = coder.create_completion(prompt, suffix=suffix, max_tokens=6, temperature=0.0)
    assert isinstance(result, dict)
    assert result["usage"]["prompt_tokens"] == len(filled)
    direct = coder.create_completion(filled, max_tokens=6, temperature=0.0)
    assert isinstance(direct, dict)
    assert result["choices"][0]["text"] == direct["choices"][0]["text"]  # the middle only: no suffix added


def test_a_model_without_fim_tokens_is_refused_with_a_value_error(llama: Llama) -> None:
    fim = llama.model.vocab.fim
    assert not fim.complete and fim.missing() == ["prefix", "suffix", "middle"]
    with pytest.raises(NotSupportedError, match="FIM tokens") as refused:
        llama.create_completion("def f():", suffix="\n", max_tokens=4)
    assert isinstance(refused.value, ValueError)
    with pytest.raises(ValueError, match="prefix, suffix, middle"):
        llama.infill_tokens("a", "b")


def test_bad_extra_files_are_type_errors(coder: Llama) -> None:
    with pytest.raises(TypeError, match="extra file 0"):
        coder.infill_tokens("a", "b", extra=[{"filename": "x.py"}])
    with pytest.raises(TypeError, match="a list"):
        coder.infill_tokens("a", "b", extra={"text": "x"})  # type: ignore[arg-type]
