"""``LlamaCpp``: a local GGUF model as a LangChain text-completion LLM."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Sequence
from typing import Any, ClassVar, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from llamacpp_integrations._runtime import iterate_blocking, run_blocking
from llamacpp_integrations.langchain._settings import COMPLETION_SETTINGS, LlamaCppGenerationSettings
from llamacpp_native import Cancellation, Chunk

OnText = Callable[[int, str], None]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class LlamaCpp(LlamaCppGenerationSettings, LLM):
    """A local llama.cpp (GGUF) model for text completion.

    A drop-in replacement for ``langchain_community.llms.LlamaCpp``: same
    parameters, but the model loads on first use (and is shared with every
    object naming the same file and load settings), generation streams
    token by token to ``on_llm_new_token`` callbacks, ``astream`` and
    ``ainvoke`` do not block the event loop (cancelling the task stops
    decoding), and ``batch``/``generate`` run several prompts as parallel
    sequences in shared decode batches.

    Example:
        .. code-block:: python

            from llamacpp_integrations.langchain import LlamaCpp

            llm = LlamaCpp(model_path="/models/model.gguf", max_tokens=64, grammar_path="json")
            llm.invoke("Describe a person in JSON format:")
    """

    _call_settings: ClassVar[frozenset[str]] = COMPLETION_SETTINGS

    @property
    def _llm_type(self) -> str:
        return "llamacpp"

    @property
    def _default_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "suffix": self.suffix,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "logprobs": self.logprobs,
            "echo": self.echo,
            "stop_sequences": self.stop,
            "repeat_penalty": self.repeat_penalty,
        }
        if self.grammar_path is not None:
            params["grammar_path"] = str(self.grammar_path)
        return params

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, **self._default_params}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_model_type="llm", **self._ls_common(stop, kwargs))  # type: ignore[typeddict-item]

    def _instance_settings(self) -> dict[str, Any]:
        return {"suffix": self.suffix, "echo": self.echo, "logprobs": self.logprobs}

    # -- the streaming core ------------------------------------------------------------------
    def _chunks(
        self, prompt: str, stop: list[str] | None, cancellation: Cancellation | None, **kwargs: Any
    ) -> Iterator[GenerationChunk]:
        """Generation chunks for one prompt; the last carries finish_reason, usage and model_name."""
        params = self._sampling(stop, kwargs)
        model_name = self.model_name
        parts = self.llama.create_completion(prompt, stream=True, cancellation=cancellation, **params)
        assert isinstance(parts, Generator)  # stream=True
        with contextlib.closing(parts):
            for part in parts:
                choice = part["choices"][0]
                info: dict[str, Any] = {}
                if choice.get("logprobs"):
                    info["logprobs"] = choice["logprobs"]
                if choice.get("finish_reason"):
                    info["finish_reason"] = choice["finish_reason"]
                    info["model_name"] = model_name
                    if part.get("usage"):
                        info["token_usage"] = part["usage"]
                if choice["text"] or info:
                    yield GenerationChunk(text=choice["text"], generation_info=info or None)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for chunk in self._chunks(prompt, stop, None, **kwargs):
            if run_manager:
                logprobs = (chunk.generation_info or {}).get("logprobs")
                run_manager.on_llm_new_token(
                    chunk.text, chunk=chunk, verbose=self.verbose, log_probs=logprobs
                )
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        chunks = iterate_blocking(lambda cancellation: self._chunks(prompt, stop, cancellation, **kwargs))
        async with contextlib.aclosing(cast(AsyncGenerator[GenerationChunk, None], chunks)):
            async for chunk in chunks:
                if run_manager:
                    logprobs = (chunk.generation_info or {}).get("logprobs")
                    await run_manager.on_llm_new_token(
                        chunk.text, chunk=chunk, verbose=self.verbose, log_probs=logprobs
                    )
                yield chunk

    # -- whole generations ---------------------------------------------------------------------
    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return _collect(self._stream(prompt, stop, run_manager, **kwargs)).text

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self._runs_in_parallel(prompts, kwargs):
            on_text = _token_forwarder(run_manager) if run_manager else None
            generations = self._parallel(prompts, stop, kwargs, on_text, None)
        else:
            generations = [_collect(self._stream(p, stop, run_manager, **kwargs)) for p in prompts]
        return self._result(generations)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self._runs_in_parallel(prompts, kwargs):
            loop = asyncio.get_running_loop()
            forwarded: list[Any] = []

            def on_text(index: int, text: str) -> None:  # called on the decoding thread
                assert run_manager is not None
                chunk = GenerationChunk(text=text, generation_info={"prompt_index": index})
                coroutine = run_manager.on_llm_new_token(text, chunk=chunk, verbose=self.verbose)
                forwarded.append(asyncio.run_coroutine_threadsafe(coroutine, loop))

            generations = await run_blocking(
                lambda cancellation: self._parallel(
                    prompts, stop, kwargs, on_text if run_manager else None, cancellation
                )
            )
            await asyncio.gather(*(asyncio.wrap_future(f) for f in forwarded))
        else:
            generations = [await _acollect(self._astream(p, stop, run_manager, **kwargs)) for p in prompts]
        return self._result(generations)

    # -- several prompts as parallel sequences ------------------------------------------------
    def _runs_in_parallel(self, prompts: Sequence[str], kwargs: dict[str, Any]) -> bool:
        """Several prompts run in one parallel batch unless logprobs are asked for."""
        return len(prompts) > 1 and kwargs.get("logprobs", self.logprobs) is None

    def _parallel(
        self,
        prompts: list[str],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        on_text: OnText | None,
        cancellation: Cancellation | None,
    ) -> list[Generation]:
        params = self._sampling(stop, kwargs)
        suffix, echo = params.pop("suffix", None) or "", params.pop("echo", False)
        params.pop("logprobs", None)
        llama = self.llama
        requests = [llama.completion_request(p, **params) for p in prompts]

        def on_chunk(index: int, chunk: Chunk) -> None:
            if on_text is not None and chunk.text:
                on_text(index, chunk.text)

        results = llama.engine.generate_many(requests, on_chunk, cancellation)
        return [
            Generation(
                text=(prompt if echo else "") + result.text + suffix,
                generation_info={
                    "finish_reason": result.finish_reason,
                    "model_name": self.model_name,
                    "token_usage": _usage(result.prompt_tokens, result.completion_tokens),
                },
            )
            for prompt, result in zip(prompts, results, strict=True)
        ]

    def _result(self, generations: list[Generation]) -> LLMResult:
        total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for generation in generations:
            for key, value in ((generation.generation_info or {}).get("token_usage") or {}).items():
                total[key] = total.get(key, 0) + value
        return LLMResult(
            generations=[[g] for g in generations],
            llm_output={"token_usage": total, "model_name": self.model_name},
        )


def _token_forwarder(run_manager: CallbackManagerForLLMRun) -> OnText:
    def on_text(index: int, text: str) -> None:
        chunk = GenerationChunk(text=text, generation_info={"prompt_index": index})
        run_manager.on_llm_new_token(text, chunk=chunk)

    return on_text


def _as_generation(chunk: GenerationChunk | None) -> Generation:
    if chunk is None:
        return Generation(text="")
    return Generation(text=chunk.text, generation_info=chunk.generation_info)


def _collect(chunks: Iterator[GenerationChunk]) -> Generation:
    final: GenerationChunk | None = None
    for chunk in chunks:
        final = chunk if final is None else final + chunk
    return _as_generation(final)


async def _acollect(chunks: AsyncIterator[GenerationChunk]) -> Generation:
    final: GenerationChunk | None = None
    async for chunk in chunks:
        final = chunk if final is None else final + chunk
    return _as_generation(final)
