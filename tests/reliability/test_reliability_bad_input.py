"""Bad input: each gives a typed exception that says what was wrong, and the model stays usable."""

from __future__ import annotations

import math
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llamacpp_native import (
    ClosedError,
    ContextError,
    GrammarError,
    Llama,
    SamplerChain,
    SamplingParams,
    TokenizeError,
)

RunPython = Callable[[str], subprocess.CompletedProcess[str]]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def model_still_answers(llama: Llama) -> Iterator[None]:
    """After every test here, the shared model must still answer correctly."""
    yield
    result = llama.create_completion("1, 2, 3, 4,", max_tokens=2, temperature=0.0)
    assert result["choices"][0]["text"] == " 5"  # type: ignore[index]


@pytest.fixture(scope="module")
def closed_llama(model_path: Path) -> Llama:
    """A model that has been closed."""
    instance = Llama(model_path, n_ctx=64, n_parallel=1, n_threads=1)
    instance.close()
    return instance


# -- construction -----------------------------------------------------------------------------


def test_a_negative_n_ctx_is_a_context_error(model_path: Path) -> None:
    with pytest.raises(ContextError, match=r"n_ctx must be >= 0 .* got -1"):
        Llama(model_path, n_ctx=-1)


def test_a_zero_n_batch_is_a_context_error(model_path: Path) -> None:
    with pytest.raises(ContextError, match="n_batch must be a positive integer, got 0"):
        Llama(model_path, n_batch=0)


def test_n_gpu_layers_on_a_cpu_only_build_warns_and_still_runs(model_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match=r"n_gpu_layers=10 ignored: this build has no GPU backend"):
        instance = Llama(model_path, n_ctx=64, n_parallel=1, n_threads=1, n_gpu_layers=10)
    with instance:
        result = instance.create_completion("1, 2, 3, 4,", max_tokens=2, temperature=0.0)
        assert result["choices"][0]["text"] == " 5"  # type: ignore[index]


def test_an_unknown_split_mode_is_a_value_error(model_path: Path) -> None:
    with pytest.raises(ValueError, match="split_mode must be one of"):
        Llama(model_path, split_mode="diagonal")


# -- generation requests --------------------------------------------------------------------------


def test_a_negative_max_tokens_is_a_value_error(llama: Llama) -> None:
    with pytest.raises(ValueError, match="max_tokens must be >= 0 or None .* got -1"):
        llama.create_completion("hello", max_tokens=-1)


def test_an_empty_token_prompt_is_a_value_error(llama: Llama) -> None:
    with pytest.raises(ValueError, match="the prompt is empty"):
        llama.create_completion([], max_tokens=2)


def test_an_empty_text_prompt_generates_from_bos_alone(llama: Llama) -> None:
    result = llama.create_completion("", max_tokens=2, temperature=0.0)
    assert result["usage"]["prompt_tokens"] == 1  # type: ignore[index]
    assert result["usage"]["completion_tokens"] == 2  # type: ignore[index]


def test_bytes_that_are_not_utf8_tokenize_as_they_are(llama: Llama) -> None:
    tokens = llama.tokenize(b"\xff\xfe abc \xc3", add_bos=False)
    text = llama.detokenize(tokens)
    assert text.startswith(b"\xff\xfe") and b"abc" in text and text.endswith(b"\xc3")  # byte tokens


def test_a_str_with_a_lone_surrogate_is_a_tokenize_error(llama: Llama) -> None:
    with pytest.raises(TokenizeError):
        llama.tokenize("broken \ud800 text")


@pytest.mark.parametrize("bad", [-1, 262144, 10**9])
def test_token_ids_outside_the_vocabulary_are_a_tokenize_error(llama: Llama, bad: int) -> None:
    with pytest.raises(
        TokenizeError, match=rf"token ids \[{bad}\] are outside the vocabulary \(valid: 0..262143\)"
    ):
        llama.create_completion([2, bad], max_tokens=2)
    with pytest.raises(TokenizeError, match="outside the vocabulary"):
        llama.detokenize([bad])


def test_an_invalid_gbnf_grammar_is_a_grammar_error(llama: Llama) -> None:
    with pytest.raises(GrammarError, match="invalid GBNF grammar"):
        llama.create_completion("hello", grammar='root ::= "unterminated', max_tokens=2)


def test_an_invalid_json_schema_is_a_grammar_error_saying_why(llama: Llama) -> None:
    with pytest.raises(GrammarError, match="type must be a string or an array of strings"):
        llama.create_chat_completion(
            HELLO,
            response_format={"type": "json_schema", "json_schema": {"schema": {"type": 12}}},
            max_tokens=2,
        )


def test_a_logit_bias_for_an_unknown_token_is_a_value_error(llama: Llama) -> None:
    with pytest.raises(ValueError, match=r"logit_bias names token ids outside the vocabulary: \[999999\]"):
        llama.create_completion("hello", logit_bias={999999: 5.0}, max_tokens=2)


def test_a_nan_temperature_is_a_value_error(llama: Llama) -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplerChain(llama.model.vocab, SamplingParams(temperature=math.nan))


def test_an_absurd_logprobs_count_is_refused_not_a_hang(run_python: RunPython) -> None:
    child = run_python(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from llamacpp_native import Llama
        llama = Llama(MODEL_PATH, n_ctx=64, n_parallel=1, n_threads=1)
        try:
            result = llama.create_completion("1, 2, 3, 4,", max_tokens=1, temperature=0.0, logprobs=10**9)
            print("returned", len(result["choices"][0]["logprobs"]["top_logprobs"][0]))
        except Exception as error:
            print("raised", type(error).__name__, error)
        """
    )
    assert child.returncode == 0, child.stderr[-2000:]
    outcome = child.stdout.split()
    assert (
        outcome[:2] == ["raised", "ValueError"]
        and "logprobs" in child.stdout
        or (outcome[0] == "returned" and int(outcome[1]) <= 262144)
    ), child.stdout


# -- chat requests ---------------------------------------------------------------------------------


def test_a_tool_without_a_name_is_a_value_error_showing_the_tool(llama: Llama) -> None:
    nameless = {"type": "function", "function": {"description": "no name here"}}
    with pytest.raises(ValueError, match=r"each tool needs .*'name'.*no name here"):
        llama.create_chat_completion(HELLO, tools=[nameless], max_tokens=2)


def test_tool_choice_naming_an_unknown_tool_is_a_value_error_listing_the_offered_ones(llama: Llama) -> None:
    with pytest.raises(ValueError, match=r"tool_choice names tool 'get_time'.*\['get_weather'\]"):
        llama.create_chat_completion(
            HELLO,
            tools=[TOOL],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            max_tokens=2,
        )


def test_an_unknown_tool_choice_word_is_a_value_error(llama: Llama) -> None:
    with pytest.raises(ValueError, match="tool_choice must be 'auto', 'none', 'required'"):
        llama.create_chat_completion(HELLO, tools=[TOOL], tool_choice="sometimes", max_tokens=2)


# -- after close ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda m: m.create_completion("hi", max_tokens=2), id="completion"),
        pytest.param(lambda m: m.create_chat_completion(HELLO, max_tokens=2), id="chat"),
        pytest.param(lambda m: m.embed("hi"), id="embed"),
        pytest.param(lambda m: m.tokenize("hi"), id="tokenize"),
        pytest.param(lambda m: m.create_completions(["hi"], max_tokens=2), id="parallel"),
    ],
)
def test_calls_after_close_raise_closed_error(closed_llama: Llama, call: Callable[[Llama], Any]) -> None:
    with pytest.raises(ClosedError, match="closed"):
        call(closed_llama)


def test_closing_twice_is_safe(model_path: Path) -> None:
    instance = Llama(model_path, n_ctx=64, n_parallel=1, n_threads=1)
    instance.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        instance.close()
    assert instance.model.closed


def test_reading_a_stream_after_its_model_was_closed_is_a_closed_error_not_a_crash(
    run_python: RunPython,
) -> None:
    child = run_python(
        """
        from llamacpp_native import ClosedError, Llama
        llama = Llama(MODEL_PATH, n_ctx=64, n_parallel=1, n_threads=1)
        stream = llama.create_completion("a b c d e f", max_tokens=20, temperature=0.0, stream=True)
        next(stream)
        llama.close()
        try:
            for _ in stream:
                pass
        except ClosedError:
            print("ClosedError")
        """
    )
    assert child.returncode == 0, f"exit status {child.returncode}: {child.stderr[-1500:]}"
    assert child.stdout.strip() == "ClosedError"
