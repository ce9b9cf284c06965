"""``LlamaCpp``: a local GGUF model as a LangChain text-completion LLM."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from llamacpp_integrations.langchain._settings import COMPLETION_SETTINGS, LlamaCppGenerationSettings
from llamacpp_native import Chunk, GenerationRequest
from llamacpp_native.api import openai_shapes

OnText = Callable[[int, str], None]


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
        return {**self._model_identity, **self._default_params}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_model_type="llm", **self._ls_common(stop, kwargs))  # type: ignore[typeddict-item]

    def _instance_settings(self) -> dict[str, Any]:
        return {"suffix": self.suffix, "echo": self.echo, "logprobs": self.logprobs}

    # -- the streaming core ------------------------------------------------------------------
    def _request(
        self, prompt: str, stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> tuple[GenerationRequest, _ChunkConverter]:
        """The engine request for one prompt, and the converter of its chunks."""
        params = self._sampling(stop, kwargs)
        suffix, echo = params.pop("suffix", None) or "", params.pop("echo", False)
        request = self.llama.completion_request(prompt, **params)
        return request, _ChunkConverter(prompt if echo else "", suffix, self.model_name)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        request, converter = self._request(prompt, stop, kwargs)
        chunks = self.llama.engine.stream(request)
        with contextlib.closing(cast(Generator[Chunk, None, None], chunks)):
            for chunk in converter.convert(chunks):
                if run_manager:
                    run_manager.on_llm_new_token(
                        chunk.text, chunk=chunk, verbose=self.verbose, log_probs=_logprobs(chunk)
                    )
                yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        request, converter = self._request(prompt, stop, kwargs)
        with self.llama.engine.submit(request) as stream:  # leaving it (or task cancel) cancels
            for first in converter.convert(()):
                yield first
            async for engine_chunk in stream:
                for chunk in converter.convert((engine_chunk,), started=True):
                    if run_manager:
                        await run_manager.on_llm_new_token(
                            chunk.text, chunk=chunk, verbose=self.verbose, log_probs=_logprobs(chunk)
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
            generations = self._parallel(prompts, stop, kwargs, on_text)
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
        if len(prompts) == 1:
            return self._result([await _acollect(self._astream(prompts[0], stop, run_manager, **kwargs))])

        async def generate(index: int, prompt: str) -> Generation:
            final: GenerationChunk | None = None
            async for chunk in self._astream(prompt, stop, None, **kwargs):
                if run_manager and chunk.text:
                    tagged = GenerationChunk(text=chunk.text, generation_info={"prompt_index": index})
                    await run_manager.on_llm_new_token(chunk.text, chunk=tagged, verbose=self.verbose)
                final = chunk if final is None else final + chunk
            return _as_generation(final)

        # Every prompt joins the engine's running batch at once; no worker threads.
        return self._result(list(await asyncio.gather(*(generate(i, p) for i, p in enumerate(prompts)))))

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
    ) -> list[Generation]:
        params = self._sampling(stop, kwargs)
        suffix, echo = params.pop("suffix", None) or "", params.pop("echo", False)
        params.pop("logprobs", None)
        llama = self.llama
        requests = [llama.completion_request(p, **params) for p in prompts]

        def on_chunk(index: int, chunk: Chunk) -> None:
            if on_text is not None and chunk.text:
                on_text(index, chunk.text)

        results = llama.engine.generate_many(requests, on_chunk)
        return [
            Generation(
                text=(prompt if echo else "") + result.text + suffix,
                generation_info={
                    "finish_reason": result.finish_reason,
                    "model_name": self.model_name,
                    "token_usage": openai_shapes.usage(result.prompt_tokens, result.completion_tokens),
                },
            )
            for prompt, result in zip(prompts, results, strict=True)
        ]

    def _result(self, generations: list[Generation]) -> LLMResult:
        usages = [(g.generation_info or {}).get("token_usage") or {} for g in generations]
        total = openai_shapes.usage(
            sum(u.get("prompt_tokens", 0) for u in usages),
            sum(u.get("completion_tokens", 0) for u in usages),
            sum((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0) for u in usages),
        )
        return LLMResult(
            generations=[[g] for g in generations],
            llm_output={"token_usage": total, "model_name": self.model_name},
        )


class _ChunkConverter:
    """Engine chunks -> LangChain ``GenerationChunk``s: echo first, suffix and metadata last."""

    def __init__(self, prefix: str, suffix: str, model_name: str) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.model_name = model_name
        self._offset = len(prefix)

    def convert(self, chunks: Iterable[Chunk], started: bool = False) -> Iterator[GenerationChunk]:
        """Convert ``chunks``; without ``started`` the echoed prompt comes first."""
        if not started and self.prefix:
            yield GenerationChunk(text=self.prefix)
        for chunk in chunks:
            info: dict[str, Any] = {}
            if chunk.logprobs:
                info["logprobs"] = openai_shapes.completion_logprobs(chunk.logprobs, self._offset)
                self._offset += sum(len(item.text) for item in chunk.logprobs)
            text = chunk.text
            if chunk.finish_reason:
                text += self.suffix
                info["finish_reason"] = chunk.finish_reason
                info["model_name"] = self.model_name
                info["token_usage"] = openai_shapes.usage(
                    chunk.prompt_tokens, chunk.completion_tokens, chunk.cached_tokens
                )
            if text or info:
                yield GenerationChunk(text=text, generation_info=info or None)


def _logprobs(chunk: GenerationChunk) -> Any:
    return (chunk.generation_info or {}).get("logprobs")


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
