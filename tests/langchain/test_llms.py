"""LlamaCpp (text completion) on the real default model: the langchain-community examples and more."""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler, CallbackManager
from langchain_core.prompts import PromptTemplate

from llamacpp_integrations.langchain import ChatLlamaCpp, LlamaCpp
from llamacpp_integrations.langchain._settings import LOAD_SETTINGS
from llamacpp_native import ModelNotFoundError, PromptLookupDecoding


class TokenCollector(BaseCallbackHandler):
    """Collects streamed tokens, as StreamingStdOutCallbackHandler would print them."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        self.tokens.append(token)


class AsyncTokenCollector(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.fixture
def llm(lc_params: dict[str, Any]) -> LlamaCpp:
    return LlamaCpp(**lc_params)


# -- parameters and loading (no generation) -----------------------------------------------------
COMMUNITY_FIELDS: dict[str, Any] = {
    "lora_base": None,
    "lora_path": None,
    "n_ctx": 512,
    "n_parts": -1,
    "seed": -1,
    "f16_kv": True,
    "logits_all": False,
    "vocab_only": False,
    "use_mlock": False,
    "n_threads": None,
    "n_batch": 8,
    "n_gpu_layers": None,
    "suffix": None,
    "max_tokens": 256,
    "temperature": 0.8,
    "top_p": 0.95,
    "logprobs": None,
    "echo": False,
    "stop": [],
    "repeat_penalty": 1.1,
    "top_k": 40,
    "last_n_tokens_size": 64,
    "use_mmap": True,
    "rope_freq_scale": 1.0,
    "rope_freq_base": 10000.0,
    "model_kwargs": {},
    "streaming": True,
    "grammar_path": None,
    "grammar": None,
    "verbose": True,
    "client": None,
    "callbacks": None,
    "tags": ["t"],
    "metadata": {"k": "v"},
}


@pytest.mark.parametrize("cls", [LlamaCpp, ChatLlamaCpp])
def test_every_community_parameter_is_accepted_and_kept(cls: type) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of them is unknown or dead at its default
        model = cls(model_path="/nowhere/model.gguf", **COMMUNITY_FIELDS)
    for name, value in COMMUNITY_FIELDS.items():
        assert getattr(model, name) == value, name


def test_defaults_are_the_community_ones_except_n_batch_and_rope() -> None:
    llm = LlamaCpp(model_path="/nowhere/model.gguf")
    assert (llm.max_tokens, llm.temperature, llm.top_p, llm.top_k, llm.repeat_penalty) == (
        256,
        0.8,
        0.95,
        40,
        1.1,
    )
    assert (llm.n_ctx, llm.seed, llm.last_n_tokens_size, llm.streaming) == (512, -1, 64, True)
    assert llm.n_batch == 512  # community: 8, far slower prompt processing
    assert (llm.rope_freq_base, llm.rope_freq_scale) == (0.0, 0.0)  # the model's own, not Llama-1's 10000/1.0


def test_constructor_loads_nothing() -> None:
    llm = LlamaCpp(model_path="/nowhere/model.gguf")  # a chain can be defined before the weights exist
    assert llm._llama is None
    with pytest.raises(ModelNotFoundError):
        llm.invoke("hello")


def test_model_path_or_client_is_required() -> None:
    with pytest.raises(ValueError, match="model_path is required"):
        LlamaCpp()


def test_objects_with_the_same_file_and_load_settings_share_one_model(lc_params: dict[str, Any]) -> None:
    first, second = LlamaCpp(**lc_params), ChatLlamaCpp(**{**lc_params, "temperature": 0.5, "seed": 7})
    assert first.llama is second.llama  # sampling settings and the seed are per call
    assert LlamaCpp(**lc_params, client=first.llama).llama is first.llama


def test_unknown_keyword_goes_to_model_kwargs_with_a_warning(lc_params: dict[str, Any]) -> None:
    with pytest.warns(UserWarning, match="typical_p was transferred to model_kwargs"):
        llm = LlamaCpp(**lc_params, typical_p=0.9)  # type: ignore[call-arg]
    assert llm.model_kwargs == {"typical_p": 0.9}
    assert llm._sampling(None, {})["typical_p"] == 0.9  # a sampling setting: used on every call


def test_model_kwargs_that_llama_cpp_does_not_know_warn_instead_of_vanishing() -> None:
    with pytest.warns(UserWarning, match=r"\['no_such_setting'\] are neither"):
        LlamaCpp(model_path="/nowhere/model.gguf", model_kwargs={"no_such_setting": 1})


def test_load_settings_reach_llama_including_kv_cache_type() -> None:
    llm = LlamaCpp(
        model_path="/nowhere/model.gguf",
        f16_kv=False,
        n_threads=3,
        flash_attn=True,
        type_v="q8_0",
        model_kwargs={"n_parallel": 2, "n_threads_batch": 2},
    )
    settings = llm._load_settings()
    assert settings["f16_kv"] is False  # selects an f32 KV cache (f16 when True)
    assert (settings["n_threads"], settings["flash_attn"], settings["type_v"]) == (3, True, "q8_0")
    assert (settings["n_parallel"], settings["n_threads_batch"]) == (2, 2)
    assert set(settings) <= LOAD_SETTINGS
    assert "n_gpu_layers" not in settings  # None: llama.cpp's default (CPU)


def test_dead_parameters_warn() -> None:
    for kwargs in ({"n_parts": 2}, {"logits_all": True}):
        with pytest.warns(UserWarning, match="ignored|obsolete"):
            LlamaCpp(model_path="/nowhere/model.gguf", **kwargs)
    with pytest.warns(DeprecationWarning, match="lora_base"):
        LlamaCpp(model_path="/nowhere/model.gguf", lora_base="/base.gguf")


def test_lora_path_loads_lazily_and_selects_its_own_shared_model(
    lc_params: dict[str, Any], lora_paths: tuple[Path, Path]
) -> None:
    params = {**lc_params, "max_tokens": 8}
    tuned = LlamaCpp(**params, lora_path=str(lora_paths[0]), lora_scale=1.0)
    assert tuned._llama is None  # nothing is loaded before the first call
    base, chat = LlamaCpp(**params), ChatLlamaCpp(**params, lora_path=str(lora_paths[0]))
    assert tuned.llama is chat.llama is not base.llama
    assert [adapter.path for adapter, _scale in tuned.llama.lora] == [lora_paths[0]]
    prompt = "1, 2, 3, 4,"
    assert tuned.invoke(prompt) != base.invoke(prompt)
    assert tuned.invoke(prompt, lora={}) == base.invoke(prompt)  # a call may drop the adapter
    assert chat.invoke("Count from 1 to 5.").content


def test_draft_model_speeds_up_a_copy_without_changing_it(lc_params: dict[str, Any]) -> None:
    code = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n"
    prompt = f"Repeat this code exactly:\n{code}\nHere it is again:\n"
    plain = LlamaCpp(**{**lc_params, "max_tokens": 20})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a field of its own, not an unknown keyword
        drafted = LlamaCpp(**{**lc_params, "max_tokens": 20}, draft_model=PromptLookupDecoding())
    assert drafted.invoke(prompt) == plain.invoke(prompt)
    assert drafted.llama is not plain.llama  # another load setting: another model
    assert drafted.llama.engine.stats()["draft_tokens_accepted"] > 0


def test_grammar_and_grammar_path_are_exclusive() -> None:
    with pytest.raises(ValueError, match="one of grammar and grammar_path"):
        LlamaCpp(model_path="/nowhere/model.gguf", grammar='root ::= "a"', grammar_path="json")


def test_unknown_per_call_argument_is_an_error(llm: LlamaCpp) -> None:
    with pytest.raises(TypeError, match="bogus"):
        llm.invoke("hi", bogus=1)


def test_get_num_tokens_uses_the_models_tokenizer(llm: LlamaCpp) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    assert llm.get_num_tokens(text) == len(llm.llama.tokenize(text, add_bos=False)) > 0


# -- the langchain-community examples ------------------------------------------------------
def test_prompt_template_chain(llm: LlamaCpp) -> None:
    template = """Question: {question}

Answer: Let's work this out in a step by step way to be sure we have the right answer."""
    chain = PromptTemplate.from_template(template) | llm
    answer = chain.invoke(
        {"question": "What NFL team won the Super Bowl in the year Justin Bieber was born?"}
    )
    assert isinstance(answer, str) and answer.strip()


def test_callback_manager_streams_every_token(lc_params: dict[str, Any]) -> None:
    handler = TokenCollector()
    with pytest.warns(DeprecationWarning, match="callback_manager"):
        llm = LlamaCpp(**lc_params, callback_manager=CallbackManager([handler]))  # type: ignore[call-arg]
    text = llm.invoke("Once upon a time")
    assert len(handler.tokens) > 1
    assert "".join(handler.tokens) == text


def test_callbacks_stream_tokens_when_streaming_is_off(lc_params: dict[str, Any]) -> None:
    handler = TokenCollector()
    text = LlamaCpp(**lc_params, streaming=False, callbacks=[handler]).invoke("Once upon a time")
    assert len(handler.tokens) > 1
    assert "".join(handler.tokens) == text


def test_grammar_path_json_gives_json(lc_params: dict[str, Any]) -> None:
    llm = LlamaCpp(**{**lc_params, "max_tokens": 64}, grammar_path="json")
    result = llm.generate(["Describe a person in JSON format:"]).generations[0][0]
    assert result.generation_info and result.generation_info["finish_reason"] == "stop"
    assert isinstance(json.loads(result.text), dict | list)


def test_grammar_path_list_gives_a_bulleted_list(lc_params: dict[str, Any]) -> None:
    llm = LlamaCpp(**lc_params, grammar_path="list")
    lines = llm.invoke("List of top-3 books").split("\n")
    assert lines[0].startswith("- ")
    assert all(line.startswith("- ") for line in lines[:-1])  # the last may be cut by max_tokens


def test_grammar_path_accepts_a_file(lc_params: dict[str, Any], tmp_path: Any) -> None:
    grammar = tmp_path / "answer.gbnf"
    grammar.write_text('root ::= "yes" | "no"\n')
    assert LlamaCpp(**lc_params, grammar_path=str(grammar)).invoke("Is water wet? Answer:") in {"yes", "no"}


def test_stream_yields_the_text_in_pieces(llm: LlamaCpp) -> None:
    chunks = list(llm.stream("The capital of France is"))
    assert len(chunks) > 1 and all(isinstance(c, str) for c in chunks)
    assert "".join(chunks) == llm.invoke("The capital of France is")  # greedy: the same text


# -- stop, metadata, logprobs ----------------------------------------------------------------
def test_stop_given_per_call_is_honoured_on_every_path(lc_params: dict[str, Any]) -> None:
    llm = LlamaCpp(**lc_params, stop=["\n\n"])
    prompt = "Count: one, two, three,"
    assert "," not in llm.invoke(prompt, stop=[","])
    assert "," not in "".join(llm.stream(prompt, stop=[","]))
    assert all("," not in text for text in llm.batch([prompt, prompt], stop=[","]))


def test_generation_info_and_llm_output(llm: LlamaCpp) -> None:
    result = llm.generate(["The capital of France is"])
    info = result.generations[0][0].generation_info
    assert info is not None
    assert info["finish_reason"] in {"stop", "length"} and info["model_name"].endswith(".gguf")
    usage = info["token_usage"]
    assert (
        usage["completion_tokens"] > 0
        and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    assert result.llm_output == {"token_usage": usage, "model_name": info["model_name"]}


def test_logprobs_when_asked(lc_params: dict[str, Any]) -> None:
    llm = LlamaCpp(**{**lc_params, "max_tokens": 4}, logprobs=3)
    info = llm.generate(["The capital of France is"]).generations[0][0].generation_info
    assert info is not None
    logprobs = info["logprobs"]
    assert (
        len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == info["token_usage"]["completion_tokens"]
    )
    assert all(len(top) == 3 for top in logprobs["top_logprobs"])


def test_echo_and_suffix(lc_params: dict[str, Any]) -> None:
    llm = LlamaCpp(**{**lc_params, "max_tokens": 4}, echo=True, suffix=" [end]")
    text = llm.invoke("The capital of France is")
    assert text.startswith("The capital of France is") and text.endswith(" [end]")


# -- batches run as parallel sequences ----------------------------------------------------
class PromptIndexCollector(AsyncCallbackHandler):
    """Records which prompt each streamed token belongs to, in arrival order (sync and async)."""

    def __init__(self) -> None:
        self.order: list[int] = []

    async def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        self.order.append(kwargs["chunk"].generation_info["prompt_index"])


def _ran_at_once(order: list[int], n: int) -> bool:
    """Every prompt's first token came before any prompt's last token."""
    firsts = [order.index(i) for i in range(n)]
    lasts = [len(order) - 1 - order[::-1].index(i) for i in range(n)]
    return max(firsts) < min(lasts)


PROMPTS: list[Any] = ["The capital of France is", "One, two, three,", "The sky is"]


@pytest.fixture
def no_end(llm: LlamaCpp) -> dict[str, Any]:
    """Call settings under which every prompt generates its 8 tokens."""
    return {"max_tokens": 8, "logit_bias": {llm.llama.token_eos(): -100.0, 106: -100.0}}


def test_batch_runs_prompts_at_once(llm: LlamaCpp, no_end: dict[str, Any]) -> None:
    handler = PromptIndexCollector()
    outputs = llm.batch(PROMPTS, config={"callbacks": [handler]}, **no_end)
    assert len(outputs) == 3 and all(isinstance(o, str) and o for o in outputs)
    assert _ran_at_once(handler.order, 3), handler.order  # not three calls one after another


async def test_abatch_runs_prompts_at_once(llm: LlamaCpp, no_end: dict[str, Any]) -> None:
    handler = PromptIndexCollector()
    outputs = await llm.abatch(PROMPTS, config={"callbacks": [handler]}, **no_end)
    assert len(outputs) == 3 and all(isinstance(o, str) and o for o in outputs)
    assert _ran_at_once(handler.order, 3), handler.order


# -- async ------------------------------------------------------------------------------------
async def test_astream_and_ainvoke(llm: LlamaCpp) -> None:
    chunks = [chunk async for chunk in llm.astream("The capital of France is")]
    assert len(chunks) > 1
    assert "".join(chunks) == await llm.ainvoke("The capital of France is")


async def test_cancelling_the_task_stops_decoding(lc_params: dict[str, Any]) -> None:
    handler = AsyncTokenCollector()
    llm = LlamaCpp(**{**lc_params, "max_tokens": 900}, callbacks=[handler])
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in llm.astream("Once upon a time"):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # returns once the decoding thread has stopped
    assert llm.llama.engine.wait_idle(timeout=60)
    assert len(handler.tokens) < 100  # far from the 900 it was allowed
    assert await llm.ainvoke("The sky is", max_tokens=2)  # and the model is usable at once
