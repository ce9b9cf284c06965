"""``LlamaCPP``: a local GGUF model as a LlamaIndex ``FunctionCallingLLM``.

Successor of ``llama-index-llms-llama-cpp`` (same parameters), on our own
binding.  Chat goes through the model's chat template, tool calls and JSON
output are grammar-constrained by llama.cpp, and the async methods run the
native work off the event loop and stop decoding when their task is cancelled.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import llama_index.core.instrumentation as instrument
from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages_to_prompt
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW, DEFAULT_NUM_OUTPUTS, DEFAULT_TEMPERATURE
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.program.utils import FlexibleModel
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.types import Model, PydanticProgramMode

from llamacpp_integrations._runtime import shared_llama
from llamacpp_integrations.llama_index._messages import call_arguments, to_openai_message
from llamacpp_integrations.llama_index._responses import (
    ChatResponses,
    CompletionResponses,
    PartialObjects,
    PromptChatResponses,
    afinal,
    final,
)
from llamacpp_integrations.schema import parse_and_validate, schema_to_grammar, to_json_schema
from llamacpp_native import Llama
from llamacpp_native.api.openai_requests import schema_from_response_format

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

dispatcher = instrument.get_dispatcher(__name__)


class LlamaCPPMetadata(LLMMetadata):
    """``LLMMetadata`` plus whether the model reads images (a projector is loaded)."""

    is_multi_modal: bool = Field(
        default=False, description="Whether chat messages may carry ImageBlocks (an mmproj is loaded)."
    )


class LlamaCPP(FunctionCallingLLM):
    """A local GGUF model through llama.cpp, with tool calling and grammar-constrained output.

    Constructing loads nothing: the model is loaded (and shared with every other
    integration object naming the same file and load settings) on first use, so
    a pipeline can be defined before the weights exist.  Nothing is ever
    downloaded: ``model_url`` is refused, ``model_path`` names a local file.

    Chat renders the messages with the model's own chat template, unless
    ``messages_to_prompt`` is given: then chat formats a prompt string with it
    and completes that.  With ``mmproj_path`` (the model's projector) chat
    messages may carry ``ImageBlock``s (bytes, a local path, a data: URL), and
    ``AudioBlock``s where the projector has an audio encoder.
    """

    model_path: str | None = Field(
        default=None, description="Path of a local .gguf file; loaded on first use, never downloaded."
    )
    temperature: float = Field(default=DEFAULT_TEMPERATURE, ge=0.0, description="Sampling temperature.")
    max_new_tokens: int = Field(default=DEFAULT_NUM_OUTPUTS, gt=0, description="Most tokens to generate.")
    context_window: int = Field(
        default=DEFAULT_CONTEXT_WINDOW,
        gt=0,
        description="Context size to load the model with (n_ctx; model_kwargs['n_ctx'] overrides it).",
    )
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Sampling arguments of Llama.create_(chat_)completion: top_p, stop, seed...",
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Load arguments of llamacpp_native.Llama (n_gpu_layers, n_threads...).",
    )
    verbose: bool = Field(
        default=False,
        description="Log llama.cpp's informational lines too (Python logging; process-wide, set at load).",
    )
    lora_path: str | None = Field(
        default=None, description="A LoRA adapter (GGUF) applied to every call, at lora_scale."
    )
    lora_scale: float = Field(default=1.0, description="Scale of the lora_path adapter.")
    lora_adapters: list[tuple[str, float]] | None = Field(
        default=None,
        description="Several LoRA adapters as (path, scale) pairs; a call's lora={name_or_path: scale} "
        "replaces them for that call.",
    )
    lora_base: str | None = Field(
        default=None, description="Deprecated and ignored: a GGUF LoRA adapter applies to model_path itself."
    )
    rpc_servers: list[str] | None = Field(
        default=None,
        description="llamacpp-rpc-server workers ('host:port') that take layers as model_kwargs' "
        "n_gpu_layers and tensor_split say. No authentication: trusted networks only.",
    )

    mmproj_path: str | None = Field(
        default=None,
        description="The model's multimodal projector (mmproj .gguf): chat messages may then carry images.",
    )

    _llama: Llama | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _refuse_model_url(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "model_url" in data:
            data = dict(data)
            if data.pop("model_url") is not None:
                raise ValueError(
                    "model_url is not supported: LlamaCPP never downloads models. Download the .gguf file "
                    "yourself and pass its local path as model_path."
                )
        return data

    @field_validator("model_path", "lora_path", "mmproj_path", mode="before")
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("lora_base")
    @classmethod
    def _lora_base_is_deprecated(cls, value: str | None) -> str | None:
        if value is not None:
            warnings.warn(
                "lora_base is deprecated and ignored: a GGUF LoRA adapter applies to model_path itself",
                DeprecationWarning,
                stacklevel=2,
            )
        return value

    @classmethod
    def class_name(cls) -> str:
        return "LlamaCPP_llm"

    # -- the model -----------------------------------------------------------------------
    @property
    def load_settings(self) -> dict[str, Any]:
        """The ``Llama`` constructor arguments this LLM loads its model with."""
        settings: dict[str, Any] = {"n_ctx": self.context_window, "verbose": self.verbose}
        if self.lora_path:
            settings.update(lora_path=self.lora_path, lora_scale=self.lora_scale)
        if self.lora_adapters:
            settings["lora_adapters"] = self.lora_adapters
        if self.rpc_servers:
            settings["rpc_servers"] = self.rpc_servers
        if self.mmproj_path:
            settings["mmproj_path"] = self.mmproj_path
        return {**settings, **self.model_kwargs}

    def _model(self) -> Llama:
        if self._llama is None:
            self._llama = shared_llama(self.model_path or "", self.load_settings)
        return self._llama

    @property
    def metadata(self) -> LLMMetadata:
        """LLM metadata; ``context_window`` is the loaded context's, or the configured one until loaded."""
        if self._llama is not None:
            context_window = self._llama.n_ctx
        else:
            context_window = self.load_settings["n_ctx"] or self.context_window
        return LlamaCPPMetadata(
            context_window=context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model_path or "unknown",
            is_multi_modal=bool(self.load_settings.get("mmproj_path")),
        )

    # -- the two cores: everything else aggregates or wraps them ----------------------------
    def _generation_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        merged = {
            "temperature": self.temperature,
            "max_tokens": self.max_new_tokens,
            **self.generate_kwargs,
            **kwargs,
        }
        merged.pop("stream", None)
        return merged

    def _completion_args(
        self, prompt: str, formatted: bool, kwargs: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        if not formatted:
            prompt = cast(Callable[[str], str], self.completion_to_prompt)(prompt)
        return prompt, self._generation_kwargs(kwargs)

    def _chat_args(
        self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any], ChatResponses | PromptChatResponses]:
        """What to send: OpenAI messages for the chat template, or a prompt from ``messages_to_prompt``."""
        if self.messages_to_prompt is generic_messages_to_prompt:
            return (
                [to_openai_message(m) for m in messages],
                self._generation_kwargs(kwargs),
                ChatResponses(),
            )
        options = dict(kwargs)
        if options.pop("tools", None):
            raise ValueError(
                "tool calling needs the model's chat template, but messages_to_prompt is set; "
                "leave messages_to_prompt unset to call tools"
            )
        for key in ("tool_choice", "parallel_tool_calls"):
            options.pop(key, None)
        grammar = _grammar_for(options.pop("response_format", None))
        if grammar is not None:
            options["grammar"] = grammar
        prompt = cast(Callable[[Sequence[ChatMessage]], str], self.messages_to_prompt)(messages)
        return prompt, self._generation_kwargs(options), PromptChatResponses()

    # -- the two cores, each for threads and for asyncio: everything else aggregates them ----------
    def _complete_stream(
        self, prompt: str, formatted: bool, kwargs: Mapping[str, Any]
    ) -> Generator[CompletionResponse, None, None]:
        """Stream ``prompt``'s continuation as cumulative responses; closing it stops decoding."""
        prompt, options = self._completion_args(prompt, formatted, kwargs)
        chunks = cast(
            Iterator[dict[str, Any]], self._model().create_completion(prompt, stream=True, **options)
        )
        converter = CompletionResponses()
        return (converter.feed(chunk) for chunk in cast(Iterator[dict[str, Any]], chunks))

    async def _acomplete_stream(
        self, prompt: str, formatted: bool, kwargs: Mapping[str, Any]
    ) -> AsyncGenerator[CompletionResponse, None]:
        prompt, options = self._completion_args(prompt, formatted, kwargs)
        model = await asyncio.to_thread(self._model)  # the first call loads the model
        chunks = await model.acreate_completion(prompt, stream=True, **options)
        converter = CompletionResponses()
        async for chunk in cast(AsyncIterator[dict[str, Any]], chunks):
            yield converter.feed(chunk)

    def _chat_stream(
        self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]
    ) -> Generator[ChatResponse, None, None]:
        """Stream the assistant's reply (text and tool calls) as cumulative responses."""
        payload, options, converter = self._chat_args(messages, kwargs)
        model = self._model()
        if isinstance(converter, ChatResponses):
            events = model.chat_events(payload, **options)
            return (r for batch in events if (r := converter.feed(batch)))
        chunks = cast(Iterator[dict[str, Any]], model.create_completion(payload, stream=True, **options))
        return (r for chunk in chunks if (r := converter.feed(chunk)))

    async def _achat_stream(
        self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]
    ) -> AsyncGenerator[ChatResponse, None]:
        payload, options, converter = self._chat_args(messages, kwargs)
        model = await asyncio.to_thread(self._model)  # the first call loads the model
        if isinstance(converter, ChatResponses):
            async for batch in await model.achat_events(payload, **options):
                if (response := converter.feed(batch)) is not None:
                    yield response
            return
        chunks = await model.acreate_completion(payload, stream=True, **options)
        async for chunk in cast(AsyncIterator[dict[str, Any]], chunks):
            if (text_response := converter.feed(chunk)) is not None:
                yield text_response

    # -- LlamaIndex's LLM interface -------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return final(self._chat_stream(messages, kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._chat_stream(messages, kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await afinal(self._achat_stream(messages, kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return self._achat_stream(messages, kwargs)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return final(self._complete_stream(prompt, formatted, kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._complete_stream(prompt, formatted, kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await afinal(self._acomplete_stream(prompt, formatted, kwargs))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return self._acomplete_stream(prompt, formatted, kwargs)

    # -- tool calling (FunctionCallingLLM) ------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Messages plus OpenAI tool specs; ``tool_choice`` may name a tool to force it."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        specs = [_openai_tool(tool) for tool in tools]
        return {
            "messages": messages,
            "tools": specs or None,
            "tool_choice": _resolve_tool_choice(tool_choice, tool_required) if specs else None,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The tool calls of a response, as ``ToolSelection``s (one per call).

        On a response of a stream still running, a call whose arguments are still
        arriving has the arguments ``{}`` so far; on a finished reply, arguments cut
        short by ``max_tokens`` are an error that says so.
        """
        calls = [block for block in response.message.blocks if isinstance(block, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            raise ValueError(
                f"expected at least one tool call, but the model answered: {response.message.content!r}"
            )
        raw = response.raw if isinstance(response.raw, dict) else {}
        streaming = "events" in raw and raw.get("finish_reason") is None
        return [
            ToolSelection(
                tool_id=call.tool_call_id or call.tool_name,
                tool_name=call.tool_name,
                tool_kwargs=call_arguments(call, partial=streaming),
            )
            for call in calls
        ]

    # -- structured output: the output class's JSON schema becomes the grammar -----------------
    def _structured_request(
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None,
        prompt_args: Mapping[str, Any],
    ) -> tuple[list[ChatMessage], dict[str, Any]]:
        messages = self._extend_messages(prompt.format_messages(llm=self, **prompt_args))
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": output_cls.__name__, "schema": to_json_schema(output_cls)},
        }
        return messages, {**(llm_kwargs or {}), "response_format": response_format}

    @staticmethod
    def _structured_output(output_cls: type[Model], response: ChatResponse) -> Model:
        raw = response.raw or {}
        value = parse_and_validate(
            response.message.content or "",
            output_cls,
            finish_reason=raw.get("finish_reason"),
            output_tokens=(raw.get("usage") or {}).get("completion_tokens"),
        )
        return output_cls.model_validate(value)

    @dispatcher.span
    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """Predict an ``output_cls`` instance; valid JSON by construction (grammar from its schema)."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._structured_request(output_cls, prompt, llm_kwargs, prompt_args)
        return self._structured_output(output_cls, self.chat(messages, **kwargs))

    @dispatcher.span
    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """Async ``structured_predict``."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._structured_request(output_cls, prompt, llm_kwargs, prompt_args)
        return self._structured_output(output_cls, await self.achat(messages, **kwargs))

    @dispatcher.span
    def stream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[Model | FlexibleModel, None, None]:
        """Partial ``output_cls`` objects as the (grammar-constrained) JSON streams in."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().stream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._structured_request(output_cls, prompt, llm_kwargs, prompt_args)
        partial = PartialObjects(output_cls)
        return (partial.feed(response) for response in self.stream_chat(messages, **kwargs))

    @dispatcher.span
    async def astream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> AsyncGenerator[Model | FlexibleModel, None]:
        """Async ``stream_structured_predict``."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._structured_request(output_cls, prompt, llm_kwargs, prompt_args)
        partial = PartialObjects(output_cls)
        responses = await self.astream_chat(messages, **kwargs)
        return (partial.feed(response) async for response in responses)


def _openai_tool(tool: Any) -> dict[str, Any]:
    """A tool's OpenAI spec, with the parameters' schema taken whole from its ``fn_schema``.

    ``ToolMetadata.to_openai_tool`` keeps only some root keywords of the schema
    (type, properties, required, $defs), so root constraints such as
    ``maxProperties`` or ``x-max-depth`` would not reach the grammar.
    """
    spec: dict[str, Any] = tool.metadata.to_openai_tool(skip_length_check=True)
    fn_schema = getattr(tool.metadata, "fn_schema", None)
    if isinstance(fn_schema, type) and issubclass(fn_schema, BaseModel):
        full = fn_schema.model_json_schema()
        full.pop("title", None)
        full.pop("description", None)
        spec["function"]["parameters"] = full
    return spec


def _resolve_tool_choice(
    tool_choice: str | dict[str, Any] | None, tool_required: bool
) -> str | dict[str, Any]:
    """LlamaIndex's tool_choice (None, auto/none/required, a tool name, an OpenAI dict) in OpenAI form."""
    if tool_choice is None:
        return "required" if tool_required else "auto"
    if isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required"):
        return {"type": "function", "function": {"name": tool_choice}}
    return tool_choice


def _grammar_for(response_format: Mapping[str, Any] | None) -> str | None:
    """GBNF for an OpenAI ``response_format`` when chat completes a plain prompt."""
    schema = schema_from_response_format(response_format)
    return None if schema is None else schema_to_grammar(schema)


__all__ = ["LlamaCPP", "LlamaCPPMetadata"]
