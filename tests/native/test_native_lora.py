"""LoRA adapters on the real model: loading, scales, per-request sets, bad files.

The adapters are random rank-4 ones written for the default model at the start
of the session (tests/lora_support.py); each changes the greedy continuation of
a counting prompt to one of its own, so whose adapter a request ran under shows
in its text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import pytest

from llamacpp_native import (
    ClosedError,
    Context,
    GenerationRequest,
    Llama,
    LoraAdapter,
    LoraError,
    Model,
)
from lora_support import write_lora_adapter

COUNT = "1, 2, 3, 4,"


@pytest.fixture(scope="module")
def lora_llama(model_path: Path, lora_paths: tuple[Path, Path]) -> Iterator[Llama]:
    """A model with both adapters loaded (named ``alpha`` and ``beta``) and none applied by default."""
    with Llama(model_path, n_ctx=1024, n_parallel=4, n_threads=1, seed=5) as instance:
        for path in lora_paths:
            instance.load_lora(path)
        yield instance


def greedy_text(llama: Llama, prompt: str = COUNT, **kwargs: Any) -> str:
    result = llama.create_completion(prompt, max_tokens=8, temperature=0.0, **kwargs)
    assert isinstance(result, dict)
    return str(result["choices"][0]["text"])


@pytest.fixture(scope="module")
def alone(lora_llama: Llama) -> dict[str, str]:
    """Greedy continuation of COUNT under each adapter set, one request at a time."""
    sets: dict[str, dict[str, float]] = {"base": {}, "alpha": {"alpha": 1.0}, "beta": {"beta": 1.0}}
    return {name: greedy_text(lora_llama, lora=lora) for name, lora in sets.items()}


# -- loading and metadata -------------------------------------------------------------------------
def test_an_adapters_metadata_is_read(lora_llama: Llama, lora_paths: tuple[Path, Path]) -> None:
    adapter = lora_llama.lora_adapters["alpha"]
    assert adapter.path == lora_paths[0]
    assert adapter.alpha == 8.0
    assert adapter.task_name == "random-7"
    assert adapter.metadata["adapter.type"] == "lora"
    assert adapter.metadata["general.architecture"] == "gemma3"


def test_a_file_is_loaded_once_per_model(lora_llama: Llama, lora_paths: tuple[Path, Path]) -> None:
    assert lora_llama.load_lora(lora_paths[0]) is lora_llama.lora_adapters["alpha"]
    with pytest.raises(ValueError, match="already taken"):
        lora_llama.load_lora(lora_paths[1], name="alpha")


# -- scales ---------------------------------------------------------------------------------------
def test_scale_zero_gives_exactly_the_base_logits_and_scale_one_changes_them(
    own_model: Model, lora_paths: tuple[Path, Path]
) -> None:
    adapter = own_model.load_lora(lora_paths[0])
    tokens = own_model.vocab.tokenize(COUNT, add_special=True)
    with Context(own_model, n_ctx=64, n_threads=1) as context:

        def logits(lora: list[tuple[LoraAdapter, float]]) -> list[float]:
            context.kv_clear()
            context.set_lora(lora)
            context.decode(tokens)
            return context.logits()

        base = logits([])
        assert logits([(adapter, 0.0)]) == base
        changed = logits([(adapter, 1.0)])
        assert max(abs(a - b) for a, b in zip(changed, base, strict=True)) > 1.0
        assert logits([]) == base  # removing the adapter restores the base model


def test_scale_zero_per_request_matches_the_base_model(lora_llama: Llama, alone: dict[str, str]) -> None:
    assert greedy_text(lora_llama, lora={"alpha": 0.0}) == alone["base"]
    assert alone["alpha"] != alone["base"] and alone["beta"] != alone["base"]
    assert alone["alpha"] != alone["beta"]


def test_adapters_combine_with_their_own_scales(lora_llama: Llama, alone: dict[str, str]) -> None:
    assert greedy_text(lora_llama, lora={"alpha": 1.0, "beta": 0.0}) == alone["alpha"]
    assert greedy_text(lora_llama, lora={"alpha": 1.0, "beta": 1.0}) not in alone.values()


# -- per request, concurrently ------------------------------------------------------------------------
def test_concurrent_requests_with_different_adapters_each_get_their_own_result(
    lora_llama: Llama, alone: dict[str, str]
) -> None:
    sets: dict[str, dict[str, float]] = {"base": {}, "alpha": {"alpha": 1.0}, "beta": {"beta": 1.0}}
    jobs = [(name, sets[name]) for name in ("alpha", "base", "beta", "alpha", "beta", "base")]
    results: dict[int, str | BaseException] = {}

    def run(index: int, lora: dict[str, float]) -> None:
        try:
            results[index] = greedy_text(lora_llama, lora=lora)
        except BaseException as error:  # the assertion below shows it
            results[index] = error

    threads = [threading.Thread(target=run, args=(i, lora)) for i, (_name, lora) in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [results.get(i) for i in range(len(jobs))] == [alone[name] for name, _lora in jobs]


async def test_async_and_chat_requests_take_lora_too(lora_llama: Llama, alone: dict[str, str]) -> None:
    result = await lora_llama.acreate_completion(COUNT, max_tokens=8, temperature=0.0, lora={"alpha": 1.0})
    assert isinstance(result, dict) and result["choices"][0]["text"] == alone["alpha"]
    rendered = lora_llama.render_chat([{"role": "user", "content": "Hi"}])
    request = lora_llama.chat_request(rendered, lora={"beta": 0.5})
    assert request.lora == ((lora_llama.lora_adapters["beta"], 0.5),)
    assert lora_llama.chat_request(rendered).lora is None  # the instance's adapters


def test_a_request_under_other_adapters_waits_and_nothing_overtakes_it(lora_llama: Llama) -> None:
    """Base, alpha, base submitted together run one after another: never in one batch, in order."""
    alpha = lora_llama.lora_adapters["alpha"]
    order: list[tuple[int, bool]] = []  # (request, is last chunk)

    def record(index: int, chunk: Any) -> None:
        order.append((index, chunk.finish_reason is not None))

    no_end = {lora_llama.token_eos(): -100.0}
    requests = [
        lora_llama.completion_request(COUNT, max_tokens=6, temperature=0.0, logit_bias=no_end, lora=lora)
        for lora in ({}, {alpha: 1.0}, {})
    ]
    lora_llama.engine.generate_many(requests, on_chunk=record)
    indices = [index for index, _last in order]
    assert indices == sorted(indices)  # 0's chunks, then 1's, then 2's


def test_the_prefix_cache_is_not_shared_between_adapter_sets(lora_llama: Llama) -> None:
    prompt = "Counting in English: one, two, three, four, five, six, seven,"

    def cached(lora: dict[str, float]) -> int:
        result = lora_llama.create_completion(prompt, max_tokens=2, temperature=0.0, lora=lora)
        assert isinstance(result, dict)
        return int(result["usage"]["prompt_tokens_details"]["cached_tokens"])

    cached({})
    assert cached({"beta": 1.0}) == 0  # the base model's KV of this prompt is not reused
    assert cached({"beta": 1.0}) > 0
    assert cached({}) > 0  # nor was it overwritten


# -- load-time adapters ---------------------------------------------------------------------------------
def test_lora_path_applies_to_every_request_that_names_no_adapters(
    model_path: Path, lora_paths: tuple[Path, Path], alone: dict[str, str]
) -> None:
    with Llama(model_path, n_ctx=256, n_parallel=2, n_threads=1, lora_path=lora_paths[0]) as llama:
        assert [a.path for a, _scale in llama.lora] == [lora_paths[0]]
        assert greedy_text(llama) == alone["alpha"]
        assert greedy_text(llama, lora={}) == alone["base"]
        assert greedy_text(llama, lora={lora_paths[1]: 1.0}) == alone["beta"]  # a path, loaded on use
        assert greedy_text(llama) == alone["alpha"]


def test_lora_adapters_loads_several_with_their_scales(
    model_path: Path, lora_paths: tuple[Path, Path], alone: dict[str, str]
) -> None:
    pairs = [(lora_paths[0], 1.0), (lora_paths[1], 0.0)]
    with Llama(model_path, n_ctx=256, n_parallel=1, n_threads=1, lora_adapters=pairs) as llama:
        assert sorted(llama.lora_adapters) == ["alpha", "beta"]
        assert greedy_text(llama) == alone["alpha"]


def test_lora_base_is_accepted_with_a_deprecation_warning(model_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="lora_base"):
        Llama(model_path, vocab_only=True, lora_base="/base.gguf").close()


def test_an_unknown_adapter_name_is_an_error_that_names_it(lora_llama: Llama) -> None:
    with pytest.raises(LoraError, match="'gamma'.*alpha.*beta"):
        lora_llama.create_completion(COUNT, lora={"gamma": 1.0})


# -- bad files ------------------------------------------------------------------------------------------
def _not_gguf(path: Path, _model: Path) -> None:
    path.write_text("this is not a GGUF file\n")


def _a_model(path: Path, model: Path) -> None:
    path.symlink_to(model)


def _wrong_key_type(path: Path, model: Path) -> None:
    write_lora_adapter(path, model, seed=3, extra={"general.type": (1, gguf.GGUFValueType.UINT32)})


def _not_lora(path: Path, model: Path) -> None:
    write_lora_adapter(path, model, seed=3, extra={"adapter.type": "control_vector"})


def _other_architecture(path: Path, model: Path) -> None:
    write_lora_adapter(path, model, seed=3, architecture="llama")


def _wrong_shapes(path: Path, model: Path) -> None:
    write_lora_adapter(path, model, seed=3, width_change=-64)


def _truncated(path: Path, model: Path) -> None:
    write_lora_adapter(path, model, seed=3)
    path.write_bytes(path.read_bytes()[:-1000])


BAD_FILES: dict[str, tuple[Callable[[Path, Path], None] | None, str]] = {
    "missing": (None, "not found"),
    "not GGUF": (_not_gguf, "not a GGUF file"),
    "a model": (_a_model, "general.type is 'model'"),
    "a key of the wrong type": (_wrong_key_type, "general.type must be a string"),
    "not a LoRA": (_not_lora, "adapter.type is 'control_vector'"),
    "another architecture": (_other_architecture, "architecture 'llama'"),
    "wrong shapes": (_wrong_shapes, "incorrect shape"),
    "truncated": (_truncated, "not within the file bounds"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_adapter_file_is_a_lora_error_naming_it_and_the_model_stays_usable(
    case: str, lora_llama: Llama, model_path: Path, tmp_path: Path, alone: dict[str, str]
) -> None:
    make, reason = BAD_FILES[case]
    path = tmp_path / "adapter.gguf"
    if make is not None:
        make(path, model_path)
    with pytest.raises(LoraError, match=reason) as raised:
        lora_llama.load_lora(path)
    assert str(path) in str(raised.value)
    assert greedy_text(lora_llama) == alone["base"]
    assert greedy_text(lora_llama, lora={"alpha": 1.0}) == alone["alpha"]


# -- ownership ------------------------------------------------------------------------------------------
def test_closing_the_model_closes_its_adapters(model_path: Path, lora_paths: tuple[Path, Path]) -> None:
    model = Model(model_path)
    adapter = model.load_lora(lora_paths[0])
    context = Context(model, n_ctx=64, n_threads=1)
    context.set_lora([(adapter, 1.0)])
    model.close()
    assert context.closed and adapter.closed
    with pytest.raises(ClosedError):
        adapter.handle  # noqa: B018
    adapter.close()  # twice is harmless


def test_an_adapter_closed_while_applied_is_freed_when_its_context_lets_go(
    own_model: Model, lora_paths: tuple[Path, Path]
) -> None:
    adapter = own_model.load_lora(lora_paths[0])
    with Context(own_model, n_ctx=64, n_threads=1) as context:
        context.set_lora([(adapter, 1.0)])
        adapter.close()
        assert adapter.closed and adapter._free.alive  # still applied: not freed yet
        with pytest.raises(ClosedError):
            context.set_lora([(adapter, 0.5)])
        context.set_lora([])
        assert not adapter._free.alive


def test_requests_refuse_closed_adapters_and_adapters_of_another_model(
    lora_llama: Llama, own_model: Model, lora_paths: tuple[Path, Path]
) -> None:
    foreign = own_model.load_lora(lora_paths[0])
    prompt = lora_llama.tokenize(COUNT)
    with pytest.raises(ValueError, match="another model"):
        lora_llama.engine.submit(GenerationRequest(prompt, lora=((foreign, 1.0),)))
    closed = lora_llama.model.load_lora(lora_paths[1])
    closed.close()
    with pytest.raises(ClosedError):
        lora_llama.engine.submit(GenerationRequest(prompt, lora=((closed, 1.0),)))
