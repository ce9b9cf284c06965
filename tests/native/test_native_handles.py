"""Native handles: freed exactly once, unusable (with a clear error) after close."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from llamacpp_native import ClosedError, Context, Llama, Model, SamplerChain, SamplingParams


def test_closing_a_model_twice_is_safe(own_model: Model) -> None:
    own_model.close()
    own_model.close()
    assert own_model.closed


def test_a_closed_model_raises_closed_error_naming_the_file(own_model: Model) -> None:
    own_model.close()
    with pytest.raises(ClosedError, match=own_model.path.name):
        _ = own_model.n_embd
    with pytest.raises(ClosedError):
        own_model.vocab.tokenize("hello")


def test_closing_a_model_closes_its_contexts(own_model: Model) -> None:
    first = Context(own_model, n_ctx=64, n_threads=1)
    second = Context(own_model, n_ctx=64, n_threads=1)
    own_model.close()
    assert first.closed and second.closed
    with pytest.raises(ClosedError, match="context is closed"):
        first.decode([2])


def test_a_model_as_context_manager_is_closed_on_exit(model_path: Path) -> None:
    with Model(model_path, vocab_only=True) as model:
        assert model.vocab.tokenize("hi")
    assert model.closed


def test_a_context_as_context_manager_is_closed_on_exit(llama: Llama) -> None:
    with Context(llama.model, n_ctx=64, n_threads=1) as context:
        context.decode(llama.tokenize("hi"))
    assert context.closed
    assert not llama.model.closed


def test_closing_a_context_twice_is_safe_and_use_after_close_raises(llama: Llama) -> None:
    context = Context(llama.model, n_ctx=64, n_threads=1)
    context.close()
    context.close()
    with pytest.raises(ClosedError):
        context.kv_pos_max(0)
    with pytest.raises(ClosedError):
        context.save_state()


def test_a_context_keeps_its_model_alive_without_other_references(model_path: Path) -> None:
    context = Context(Model(model_path), n_ctx=64, n_threads=1)
    gc.collect()
    tokens = context.model.vocab.tokenize("1, 2, 3")
    context.decode(tokens)
    assert context.kv_pos_max(0) == len(tokens) - 1
    context.model.close()


def test_a_sampler_chain_closes_twice_and_refuses_use_after_close(llama: Llama) -> None:
    chain = SamplerChain(llama.model.vocab, SamplingParams(temperature=0.0))
    chain.close()
    chain.close()
    with pytest.raises(ClosedError, match="sampler chain is closed"):
        chain.reset()


def test_a_sampler_chain_as_context_manager_is_closed_on_exit(llama: Llama) -> None:
    with SamplerChain(llama.model.vocab, SamplingParams()) as chain:
        chain.accept(llama.tokenize("hi", add_bos=False))
    with pytest.raises(ClosedError):
        chain.accept([2])


def test_a_llama_as_context_manager_frees_its_model(model_path: Path) -> None:
    with Llama(model_path, n_ctx=64, n_parallel=1, n_threads=1) as instance:
        instance.tokenize("hi")
    assert instance.model.closed
    assert instance.engine.context.closed
