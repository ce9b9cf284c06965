"""Chat templates through llama.cpp's template engine (Jinja, tools, parsing)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llamacpp_native.binding._library import ffi, lib, take_string
from llamacpp_native.binding.gate import Gate
from llamacpp_native.binding.model import Model
from llamacpp_native.chat.continuation import Opening
from llamacpp_native.chat.media import MediaSource
from llamacpp_native.errors import ChatTemplateError, ClosedError, GrammarError
from llamacpp_native.grammar.json_schema import SchemaPreparer, for_prompt

# common_grammar_trigger_type in llama.cpp's common/common.h
TRIGGER_TOKEN, TRIGGER_WORD, TRIGGER_PATTERN, TRIGGER_PATTERN_FULL = range(4)


@dataclass(frozen=True)
class RenderedChat:
    """A chat rendered to a prompt, with what generation and parsing need."""

    prompt: str
    grammar: str
    grammar_lazy: bool
    grammar_triggers: list[dict[str, Any]]
    preserved_tokens: list[str]
    additional_stops: list[str]
    format_name: str
    parser_params: dict[str, Any]
    media: tuple[MediaSource, ...] = ()
    """The images and audio of the messages, in the order of the media markers in ``prompt``."""
    thinking_tags: tuple[str, str] | None = None
    """The template's (start, end) thinking tags when the reply's thinking is parsed apart, else None."""
    opening: Opening | None = None
    """What the prompt already holds of the reply when it continues the last assistant turn
    (see :mod:`llamacpp_native.chat.continuation`), else None."""

    @property
    def needs_parser(self) -> bool:
        """Whether the reply must be parsed (tool calls, a wrapped answer, thinking) or is plain text."""
        return bool(self.grammar) or self.thinking_tags is not None


class ChatTemplates:
    """The chat templates of a model (or an override), owned exactly once.

    Rendering runs inside ``gate``: ``close()`` (or closing the model) refuses new
    renders with ``ClosedError`` and waits for those in flight before freeing.
    """

    def __init__(self, model: Model, template: str | None = None) -> None:
        self.gate = Gate("chat templates", "chat templates are closed")
        self._close_lock = threading.Lock()
        out = ffi.new("lcpp_chat_templates **")
        err = ffi.new("char **")
        with model.gate:
            status = lib.lcpp_chat_templates_init(model.handle, (template or "").encode("utf-8"), out, err)
            if status != 0:
                take_string(status, err, ChatTemplateError)
            self._handle: Any = ffi.gc(out[0], lib.lcpp_chat_templates_free)
            model._register_dependent(self)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str = "auto",
        parallel_tool_calls: bool = True,
        add_generation_prompt: bool = True,
        json_schema: dict[str, Any] | None = None,
        grammar: str | None = None,
        reasoning_format: str = "auto",
        chat_template_kwargs: dict[str, Any] | None = None,
        continue_final_message: bool | str = False,
    ) -> RenderedChat:
        """Render OpenAI-style ``messages`` (and ``tools``) to a prompt and grammar.

        ``reasoning_format`` (``none``, ``auto``, ``deepseek``, ``deepseek-legacy``)
        says whether a thinking model's reasoning is parsed apart from the content;
        ``chat_template_kwargs`` are extra template variables, such as
        ``{"enable_thinking": False}``.  ``continue_final_message`` (``True``,
        ``"content"`` or ``"reasoning_content"``) leaves the last assistant turn open for
        the reply to continue (see :func:`llamacpp_native.chat.continuation.plan_continuation`).

        The grammar of ``json_schema`` and of the tools' parameters gets this
        package's additions to llama.cpp's converter (number bounds, property
        counts, recursion depth: see :mod:`llamacpp_native.grammar.json_schema`): the
        template renders the prompt and parser from the schemas as given, and the
        grammar from the schemas as prepared for the converter.
        """
        try:
            shown_schema = for_prompt(json_schema) if json_schema is not None else None
            shown_tools = [_tool_with(tool, for_prompt) for tool in tools or []] or None
        except (TypeError, ValueError, RecursionError):
            shown_schema, shown_tools = json_schema, tools
        options = _thinking_options(reasoning_format, chat_template_kwargs)
        if continue_final_message:
            options["continue_final_message"] = continue_final_message
        result = self._apply(
            messages,
            shown_tools,
            tool_choice,
            parallel_tool_calls,
            add_generation_prompt,
            shown_schema,
            grammar,
            options,
        )
        if not grammar and (tools or json_schema is not None):
            preparer = SchemaPreparer()
            try:
                prepared_schema = preparer.prepare(json_schema) if json_schema is not None else None
                prepared_tools = [_tool_with(tool, preparer.prepare) for tool in tools or []] or None
            except GrammarError:
                raise
            except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError):
                preparer = SchemaPreparer()  # malformed: the template's own grammar stands
            if preparer.changed:
                constrained = self._apply(
                    messages,
                    prepared_tools,
                    tool_choice,
                    parallel_tool_calls,
                    add_generation_prompt,
                    prepared_schema,
                    grammar,
                    options,
                )
                result["grammar"] = preparer.splice(constrained["grammar"]) if constrained["grammar"] else ""
        return RenderedChat(
            prompt=result["prompt"],
            grammar=result["grammar"],
            grammar_lazy=bool(result["grammar_lazy"]),
            grammar_triggers=result["grammar_triggers"],
            preserved_tokens=result["preserved_tokens"],
            additional_stops=result["additional_stops"],
            format_name=result["format_name"],
            parser_params={
                "format": result["format"],
                "generation_prompt": result["generation_prompt"],
                "parser": result["parser"],
            },
            thinking_tags=(result["thinking_start_tag"], result["thinking_end_tag"])
            if result["supports_thinking"]
            and options["reasoning_format"] != "none"
            and result["thinking_end_tag"]
            else None,
        )

    def _apply(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        tool_choice: str,
        parallel_tool_calls: bool,
        add_generation_prompt: bool,
        json_schema: dict[str, Any] | None,
        grammar: str | None,
        options: dict[str, Any],
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            **options,
            "messages": messages,
            "tool_choice": tool_choice,
            "parallel_tool_calls": parallel_tool_calls,
            "add_generation_prompt": add_generation_prompt,
        }
        if tools:
            request["tools"] = tools
        if json_schema is not None:
            request["json_schema"] = json_schema
        if grammar:
            request["grammar"] = grammar
        out = ffi.new("char **")
        encoded = json.dumps(request).encode("utf-8")
        with self.gate:
            if self._handle is None:
                raise ClosedError("chat templates are closed")
            status = lib.lcpp_chat_apply(self._handle, encoded, out)
        result: dict[str, Any] = json.loads(take_string(status, out, ChatTemplateError))
        return result

    def close(self) -> None:
        """Free the templates once the renders in flight have left.  Safe to call twice."""
        if self._handle is None:
            return
        self.gate.check_close()
        with self._close_lock:
            self.gate.close()
            if self._handle is not None:
                handle, self._handle = self._handle, None
                ffi.release(handle)


def builtin_template_names() -> list[str]:
    """llama.cpp's built-in chat templates, which ``chat_template`` may name instead of Jinja text
    (rendered by ``llama_chat_apply_template``: no tools, no continued turns)."""
    count = lib.llama_chat_builtin_templates(ffi.NULL, 0)
    names = ffi.new("const char *[]", count)
    lib.llama_chat_builtin_templates(names, count)
    return [ffi.string(name).decode() for name in names]


REASONING_FORMATS = ("none", "auto", "deepseek", "deepseek-legacy")
"""llama.cpp's names for how a thinking model's reasoning is returned (``none``: left in the content)."""


def check_reasoning_format(reasoning_format: str) -> str:
    """``reasoning_format`` itself, or a ``ValueError`` naming the accepted values."""
    if reasoning_format not in REASONING_FORMATS:
        raise ValueError(
            f"unknown reasoning_format {reasoning_format!r}; choose one of {', '.join(REASONING_FORMATS)}"
        )
    return reasoning_format


def _thinking_options(reasoning_format: str, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The template request's thinking settings (``enable_thinking`` from the kwargs, as llama-server)."""
    options: dict[str, Any] = {"reasoning_format": check_reasoning_format(reasoning_format)}
    if kwargs:
        if not isinstance(kwargs, dict):
            raise ValueError(f"chat_template_kwargs must be an object, got {type(kwargs).__name__}")
        enable = kwargs.get("enable_thinking", True)
        if not isinstance(enable, bool):
            raise ValueError(f"chat_template_kwargs.enable_thinking must be a boolean, got {enable!r}")
        options["chat_template_kwargs"] = kwargs
        options["enable_thinking"] = enable
    return options


def _tool_with(tool: dict[str, Any], change: Callable[[Any], Any]) -> dict[str, Any]:
    """An OpenAI tool spec with ``change`` applied to its parameters' schema."""
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("parameters"), dict):
        return tool
    return {**tool, "function": {**function, "parameters": change(function["parameters"])}}


def parse_chat_output(
    parser_params: dict[str, Any], text: str, *, partial: bool = False, parse_tool_calls: bool = True
) -> dict[str, Any]:
    """Parse generated text into an OpenAI-style assistant message (content, tool_calls)."""
    params = dict(parser_params, parse_tool_calls=parse_tool_calls)
    out = ffi.new("char **")
    status = lib.lcpp_chat_parse(json.dumps(params).encode("utf-8"), text.encode("utf-8"), partial, out)
    message: dict[str, Any] = json.loads(take_string(status, out, ChatTemplateError))
    return message
