"""``ChatLlamaCpp``: a local GGUF model as a LangChain chat model, with tools and structured output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, ClassVar, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_openai_messages
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers import PydanticOutputParser
from langchain_core.output_parsers.base import OutputParserLike
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import Field, model_validator
from typing_extensions import Self

from llamacpp_integrations.langchain._settings import CHAT_SETTINGS, PROVIDER, LlamaCppGenerationSettings
from llamacpp_integrations.schema import check_strict, parse_and_validate, to_json_schema, truncation_error
from llamacpp_native import GrammarError
from llamacpp_native.api import openai_shapes
from llamacpp_native.events import (
    Event,
    Finish,
    LogprobsDelta,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)

ToolLike = Mapping[str, Any] | type | Callable[..., Any] | BaseTool
StructuredOutputMethod = Literal["json_schema", "function_calling", "json_mode"]


class ChatLlamaCpp(LlamaCppGenerationSettings, BaseChatModel):
    """A local llama.cpp (GGUF) model as a chat model.

    A drop-in replacement for ``langchain_community.chat_models.ChatLlamaCpp``
    with the same parameters, plus what it lacked: real ``tool_choice``
    ("auto", "any"/"required", "none", a tool name), several tool calls per
    turn, streamed tool-call chunks, usage metadata, and structured output by
    JSON schema, function calling or JSON mode.  Tool calls and JSON output
    are constrained by a grammar, so they are valid by construction.

    The model loads on first use.  The chat template is the model's own, or
    ``chat_format`` ("gemma", "chatml") for models without one.  With
    ``mmproj_path`` (the model's projector) messages may carry images, as
    LangChain's standard ``{"type": "image", "base64": ..., "mime_type": ...}``
    blocks or OpenAI ``image_url`` blocks (data URLs or local paths).

    Example:
        .. code-block:: python

            from llamacpp_integrations.langchain import ChatLlamaCpp

            chat = ChatLlamaCpp(model_path="/models/model.gguf", temperature=0)
            chat.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?")
    """

    chat_format: str | None = Field(
        default=None,
        description="Chat template for models without one: 'gemma' or 'chatml' (None: automatic).",
    )
    mmproj_path: str | None = Field(
        default=None,
        description="The model's multimodal projector (mmproj .gguf): messages may then carry images "
        "(LangChain image blocks or OpenAI image_url blocks), and audio where it has an audio encoder.",
    )
    logprobs: bool | int | None = Field(  # type: ignore[assignment]
        default=None, description="Return token log-probabilities (True, or how many top alternatives)."
    )
    top_logprobs: int | None = Field(
        default=None, description="Top alternatives to return per token with logprobs."
    )
    reasoning_format: Literal["none", "auto", "deepseek", "deepseek-legacy"] | None = Field(
        default=None,
        description="A thinking model's reasoning: 'auto' (default) returns it apart, in "
        "additional_kwargs['reasoning_content']; 'none' leaves it in the content.",
    )
    reasoning_budget: int | None = Field(
        default=None, description="Most thinking tokens per reply; then the end-of-thinking tag is forced."
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description="Extra chat template variables, e.g. {'enable_thinking': False}."
    )

    _call_settings: ClassVar[frozenset[str]] = CHAT_SETTINGS

    @model_validator(mode="after")
    def _check_chat_settings(self) -> Self:
        for name in ("suffix", "echo"):
            if getattr(self, name):
                warnings.warn(
                    f"{name} has no meaning for a chat model and is ignored", UserWarning, stacklevel=2
                )
        return self

    @property
    def _llm_type(self) -> str:
        return "llamacpp-chat"

    @property
    def _default_params(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "logprobs": self.logprobs,
            "stop_sequences": self.stop,
            "repeat_penalty": self.repeat_penalty,
        }

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**self._model_identity, **self._default_params}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_model_type="chat", **self._ls_common(stop, kwargs))  # type: ignore[typeddict-item]

    def _load_settings(self) -> dict[str, Any]:
        settings = super()._load_settings()
        if self.chat_format is not None:
            settings["chat_format"] = self.chat_format
        if self.mmproj_path is not None:
            settings["mmproj_path"] = self.mmproj_path
        return settings

    @property
    def _model_identity(self) -> dict[str, Any]:
        identity = super()._model_identity
        if self.mmproj_path:
            identity["mmproj_path"] = self.mmproj_path
        return identity

    def _instance_settings(self) -> dict[str, Any]:
        settings = {"logprobs": self.logprobs, "top_logprobs": self.top_logprobs}
        for name in ("reasoning_format", "reasoning_budget", "chat_template_kwargs"):
            value = getattr(self, name)
            if value is not None:
                settings[name] = value
        return settings

    def _request(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``Llama.create_chat_completion``."""
        params = self._sampling(stop, kwargs)
        logprobs, top = params.pop("logprobs", None), params.pop("top_logprobs", None)
        if logprobs:
            params["logprobs"] = True
            count = logprobs if isinstance(logprobs, int) and not isinstance(logprobs, bool) else 0
            params["top_logprobs"] = top if top is not None else count
        tools = [_openai_tool(t) for t in params.get("tools") or []]
        if tools:
            params["tools"] = tools
            params["tool_choice"] = _tool_choice(params.get("tool_choice"), tools)
            params.setdefault("parallel_tool_calls", False)  # llama.cpp server's default: small models loop
        else:
            params.pop("tools", None)
            params.pop("tool_choice", None)
        if (tools or params.get("response_format")) and "grammar" not in kwargs:
            params.pop("grammar", None)  # the tools' or schema's grammar takes the place of the default one
        return params

    # -- the streaming core --------------------------------------------------------------------
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Message chunks as the reply is parsed; the last carries finish_reason and usage."""
        events = self.llama.chat_events(_to_openai_messages(messages), **self._request(stop, kwargs))
        model_name = self.model_name
        with contextlib.closing(events):
            for batch in events:
                if batch:
                    yield _chunk_from_events(batch, model_name)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        llama = await asyncio.to_thread(getattr, self, "llama")  # the first call loads the model
        events = await llama.achat_events(_to_openai_messages(messages), **self._request(stop, kwargs))
        model_name = self.model_name
        async with contextlib.aclosing(events):
            async for batch in events:
                if batch:
                    yield _chunk_from_events(batch, model_name)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = []
        for chunk in self._stream(messages, stop, run_manager, **kwargs):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk, logprobs=_logprobs(chunk))
            chunks.append(chunk)
        return generate_from_stream(iter(chunks))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = []
        async for chunk in self._astream(messages, stop, run_manager, **kwargs):
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk, logprobs=_logprobs(chunk))
            chunks.append(chunk)
        return generate_from_stream(iter(chunks))

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[ToolLike] | None = None
    ) -> int:
        """Prompt tokens of ``messages`` (and ``tools``) as rendered by the chat template."""
        openai_tools = [_openai_tool(t) for t in tools or []] or None
        rendered = self.llama.render_chat(_to_openai_messages(messages), tools=openai_tools)
        return len(self.llama.chat_prompt_tokens(rendered))

    # -- tools and structured output --------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[ToolLike],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` (dicts, pydantic classes, functions or BaseTools) to the model.

        ``tool_choice``: "auto" (the model decides), "any" or "required" (some
        tool must be called), "none", a tool's name or an OpenAI-style
        ``{"type": "function", "function": {"name": ...}}`` (that tool must be
        called), or True (the single tool must be called).  Tool calls are
        grammar-constrained to the tools' JSON schemas.  One call per turn
        unless ``parallel_tool_calls=True`` (llama.cpp server's default: small
        models otherwise tend to repeat calls until max_tokens).  ``strict=True``
        refuses (``GrammarError``) tools whose schemas have rules a grammar cannot
        enforce (``llamacpp_integrations.schema.unenforced`` lists them).
        """
        formatted = [_openai_tool(t, strict=strict) for t in tools]
        if strict:
            for spec in formatted:
                function = spec["function"]
                check_strict(function.get("parameters") or {}, f"tool {function['name']!r}")
        if tool_choice is not None:
            kwargs["tool_choice"] = _tool_choice(tool_choice, formatted)
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: Mapping[str, Any] | type | None = None,
        *,
        method: StructuredOutputMethod = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """A runnable whose output follows ``schema`` (pydantic class, TypedDict or JSON schema dict).

        ``method``: "json_schema" (default) constrains the reply to the schema
        by grammar; "function_calling" forces a call of a tool made from the
        schema; "json_mode" constrains the reply to some JSON object (put the
        wanted shape in the prompt).  With ``include_raw`` the result is a
        dict with "raw", "parsed" and "parsing_error".  Rules of the schema that
        no grammar enforces (``not``, ``uniqueItems``, lookaround patterns...:
        ``llamacpp_integrations.schema.unenforced``) are checked after generation
        and raise ``SchemaValidationError``; ``strict=True`` refuses such a schema
        up front with a ``GrammarError`` naming them.
        """
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        if schema is None:
            raise ValueError(f"schema must be specified for method={method!r}")
        if strict and method in ("json_schema", "function_calling"):
            check_strict(_json_schema(schema))
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        ls_format = {
            "kwargs": {"method": method, "strict": strict},
            "schema": convert_to_json_schema(cast(Any, schema)),
        }
        parser: Runnable[Any, Any]
        if method == "function_calling":
            tool = convert_to_openai_tool(schema, strict=strict)
            name = tool["function"]["name"]
            llm = self.bind_tools(
                [tool], tool_choice=name, parallel_tool_calls=False, ls_structured_output_format=ls_format
            )
            if is_pydantic:
                parser = PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True) | _validator(schema)
        elif method == "json_schema":
            json_schema = _json_schema(schema)
            response_format = {
                "type": "json_schema",
                "json_schema": {
                    "name": json_schema.get("title", "output"),
                    "schema": json_schema,
                    "strict": strict,
                },
            }
            llm = self.bind(response_format=response_format, ls_structured_output_format=ls_format)
            parser = _pydantic_or_json_parser(schema, is_pydantic, json_schema)
        elif method == "json_mode":
            llm = self.bind(response_format={"type": "json_object"}, ls_structured_output_format=ls_format)
            parser = _pydantic_or_json_parser(schema, is_pydantic, _json_schema(schema))
        else:
            raise ValueError(
                f"method must be 'json_schema', 'function_calling' or 'json_mode', not {method!r}"
            )
        parser = RunnableLambda(_complete_reply, name="check_complete") | parser
        if not include_raw:
            return llm | parser
        parser_assign = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
        parser_with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
        return RunnableMap(raw=llm) | parser_with_fallback


# -- helpers -------------------------------------------------------------------------------------
_CONTENT_BLOCKS = {"text", "image_url", "input_audio"}


def _to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """OpenAI-style message dicts (assistant tool_calls, role "tool" with tool_call_id).

    LangChain's standard image and audio blocks become OpenAI ``image_url`` /
    ``input_audio`` parts (a ``mmproj_path`` model reads them).
    """
    converted = convert_to_openai_messages(list(messages), text_format="string")
    for message in converted:
        content = message.get("content")
        if not isinstance(content, str | None):
            kinds = {str(block.get("type")) if isinstance(block, Mapping) else "?" for block in content}
            if kinds - _CONTENT_BLOCKS:
                raise ValueError(
                    f"ChatLlamaCpp takes text, image and audio blocks; got {sorted(kinds - _CONTENT_BLOCKS)}"
                )
    return converted


def _chunk_from_events(events: list[Event], model_name: str) -> ChatGenerationChunk:
    """One batch of the reply's events as a LangChain chunk; the final one carries the metadata.

    Tool-call fragments become ``tool_call_chunks`` (LangChain joins them by
    ``index``), and thinking goes to ``additional_kwargs["reasoning_content"]``.
    """
    content: list[str] = []
    reasoning: list[str] = []
    calls = []
    logprobs: list[Any] = []
    finish: str | None = None
    usage: UsageMetadata | None = None
    for event in events:
        if isinstance(event, TextDelta):
            content.append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, ToolCallDelta):
            calls.append(
                tool_call_chunk(name=event.name, args=event.arguments, id=event.id, index=event.index)
            )
        elif isinstance(event, LogprobsDelta):
            logprobs.extend(event.items)
        elif isinstance(event, Finish):
            finish = event.reason
        elif isinstance(event, Usage):
            usage = UsageMetadata(
                input_tokens=event.prompt_tokens,
                output_tokens=event.completion_tokens,
                total_tokens=event.prompt_tokens + event.completion_tokens,
                input_token_details={"cache_read": event.cached_tokens},
                output_token_details={},
            )
    message = AIMessageChunk(
        content="".join(content),
        additional_kwargs={"reasoning_content": "".join(reasoning)} if reasoning else {},
        tool_call_chunks=calls,
        usage_metadata=usage,
        response_metadata={"finish_reason": finish, "model_name": model_name, "model_provider": PROVIDER}
        if finish
        else {},
        chunk_position="last" if finish else None,
    )
    info = {"logprobs": openai_shapes.chat_logprobs(logprobs)} if logprobs else None
    return ChatGenerationChunk(message=message, generation_info=info)


def _openai_tool(tool: Any, strict: bool | None = None) -> dict[str, Any]:
    """The OpenAI tool spec, with the parameters' schema taken whole from a tool's ``args_schema``.

    ``convert_to_openai_tool`` rebuilds a ``BaseTool``'s parameters and drops
    constraints pydantic keeps in ``json_schema_extra`` (an ``enum`` given to
    ``Field``), so the grammar would not see them.  Arguments LangChain hides
    from the model (injected ones) stay hidden.
    """
    spec = convert_to_openai_tool(tool, strict=strict)
    schema = getattr(tool, "args_schema", None)
    if isinstance(tool, BaseTool) and isinstance(schema, type) and is_basemodel_subclass(schema):
        lossy = spec["function"]["parameters"]
        full = cast(Any, schema).model_json_schema()
        shown = set(lossy.get("properties") or {})
        full["properties"] = {k: v for k, v in (full.get("properties") or {}).items() if k in shown}
        full["required"] = [k for k in full.get("required") or [] if k in shown]
        full.pop("title", None)
        full.pop("description", None)
        spec["function"]["parameters"] = full
    return spec


def _tool_choice(choice: Any, tools: Sequence[Mapping[str, Any]]) -> str | dict[str, Any]:
    """A LangChain ``tool_choice`` as llamacpp_native takes it: auto, none, required or one tool."""
    names = [t["function"]["name"] for t in tools]
    if choice is None or choice is False or choice == "auto":
        return "auto"
    if choice == "none":
        return "none"
    if choice in ("any", "required"):
        return "required"
    if choice is True:
        if len(names) != 1:
            raise ValueError(f"tool_choice=True needs exactly one tool; {len(names)} were given: {names}")
        name = names[0]
    elif isinstance(choice, str):
        name = choice
    elif isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
    else:
        raise ValueError(f"unrecognised tool_choice {choice!r}")
    if name not in names:
        raise ValueError(f"tool_choice {choice!r} names a tool that was not given; the tools are {names}")
    return {"type": "function", "function": {"name": name}}


def _json_schema(schema: Any) -> dict[str, Any]:
    try:
        return to_json_schema(schema)
    except GrammarError:  # e.g. a pydantic.v1 model
        return convert_to_json_schema(cast(Any, schema))


def _validator(schema: Any) -> Runnable[Any, Any]:
    """Check a parsed value against the schema (rules a grammar cannot enforce, e.g. number bounds)."""
    json_schema = _json_schema(schema)
    return RunnableLambda(lambda value: parse_and_validate(json.dumps(value), json_schema), name="validate")


def _pydantic_or_json_parser(
    schema: Any, is_pydantic: bool, json_schema: dict[str, Any]
) -> Runnable[Any, Any]:
    if is_pydantic:
        parser: OutputParserLike[Any] = PydanticOutputParser(pydantic_object=schema)
        return parser
    return RunnableLambda(lambda message: parse_and_validate(message.text, json_schema), name="parse_json")


def _complete_reply(message: BaseMessage) -> BaseMessage:
    """Pass a finished reply on; raise ``OutputTruncatedError`` where max_tokens cut it off."""
    if message.response_metadata.get("finish_reason") != "length" or getattr(message, "tool_calls", None):
        return message
    try:
        json.loads(message.text)
    except json.JSONDecodeError:
        usage = getattr(message, "usage_metadata", None) or {}
        raise truncation_error("length", usage.get("output_tokens")) from None
    return message


def _logprobs(chunk: ChatGenerationChunk) -> Any:
    return (chunk.generation_info or {}).get("logprobs")


__all__ = ["ChatLlamaCpp"]
