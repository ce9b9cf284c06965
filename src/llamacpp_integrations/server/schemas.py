"""Request bodies, as OpenAI (and llama-server, for the extra sampling fields) send them.

Unknown fields are ignored, so newer clients keep working; known fields are
type-checked, and a bad one is answered with 400 naming it.  Each model turns
itself into the keyword arguments of ``llamacpp_native.Llama``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal, cast

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from llamacpp_integrations.schema import check_schema

INT32_MAX = 2**31 - 1
MAX_CHOICES = 128
"""The most ``n`` a body may ask for; a model serves at most its ``n_parallel`` (else 400)."""
SEED_MASK = 0xFFFFFFFF
"""Seeds are 32-bit in llama.cpp: -1 becomes 0xFFFFFFFF, which means a random seed."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)


class StreamOptions(_Body):
    """``stream_options``: with ``include_usage`` a last chunk with ``choices: []`` carries the usage."""

    include_usage: bool = False


class SamplingBody(_Body):
    """The sampling fields every generation request takes (llama-server's names), and a grammar."""

    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(default=None, ge=0, le=INT32_MAX)
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool = Field(default=False, description="Never end at an end-of-generation token.")
    grammar: str | None = Field(default=None, description="A GBNF grammar the output must follow.")

    def sampling_kwargs(self) -> dict[str, Any]:
        """The sampling options and grammar given, as ``Llama`` takes them (seeds made 32-bit)."""
        names = (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "typical_p",
            "repeat_penalty",
            "frequency_penalty",
            "presence_penalty",
            "grammar",
        )
        given = {name: getattr(self, name) for name in names}
        options: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
        if self.seed is not None:
            options["seed"] = self.seed & SEED_MASK
        return options


class GenerationBody(SamplingBody):
    """What completions and chat share: model, streaming, limits, sampling and constraints."""

    model: str | None = Field(default=None, description="A served model's name; omitted = the default.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0, description="0 or null: until the context ends.")
    stop: str | list[str] | None = None
    n: int | None = Field(
        default=1, ge=1, le=MAX_CHOICES, description="Choices per prompt, at most the model's n_parallel."
    )
    logit_bias: dict[int, float] | None = Field(default=None, description="Token id (as a string) -> bias.")
    return_progress: bool = Field(
        default=False,
        description="llama-server's extension, streamed: a chunk with 'prompt_progress' (total, cache, "
        "processed, time_ms) as the prompt starts and after each batch of it is read.",
    )

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def common_kwargs(self, end_tokens: Sequence[int]) -> dict[str, Any]:
        """Sampling, stop strings and grammar for ``Llama``, only those given.

        ``end_tokens`` get a -inf bias when ``ignore_eos`` is set.
        """
        options = self.sampling_kwargs()
        if self.stop is not None:
            options["stop"] = self.stop
        bias: dict[int, float] = dict(self.logit_bias or {})
        if self.ignore_eos:
            bias.update(dict.fromkeys(end_tokens, -math.inf))
        if bias:
            options["logit_bias"] = bias
        if self.n is not None and self.n != 1:
            options["n"] = self.n
        if self.stream and self.return_progress:
            options["return_progress"] = True
        return options


class CompletionRequest(GenerationBody):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text or token ids, or a list of them: one choice (n with n) per prompt."
    )
    max_tokens: int | None = Field(default=16, ge=0, description="0 or null: until the context ends.")
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=INT32_MAX, description="Top alternatives per token.")

    def prompts(self) -> str | list[int] | list[str | list[int]]:
        """The prompt as ``Llama`` takes it: text, token ids, or a batch of them (``ValueError``: empty)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if not prompt or any(isinstance(item, list) and not item for item in prompt):
            raise ValueError("prompt must hold at least one token, text or prompt")
        if all(isinstance(item, int) for item in prompt):
            return [int(cast(int, item)) for item in prompt]
        return [item if isinstance(item, str) else [int(t) for t in cast(list[int], item)] for item in prompt]

    @property
    def choices(self) -> int:
        """How many choices the response holds: ``n`` per prompt."""
        prompt = self.prompt
        batch = 1 if isinstance(prompt, str) or all(isinstance(p, int) for p in prompt) else len(prompt)
        return batch * (self.n or 1)

    def llama_kwargs(self, end_tokens: Sequence[int]) -> dict[str, Any]:
        """Keyword arguments of ``Llama.acreate_completion``."""
        return {
            "prompt": self.prompts(),
            "suffix": self.suffix,
            "max_tokens": self.max_tokens,
            "echo": self.echo,
            "logprobs": self.logprobs,
            **self.common_kwargs(end_tokens),
        }


class ImageURL(_Body):
    """``image_url``: a ``data:`` URL (``file://`` with --media-path, http(s) with --allow-remote-media)."""

    url: str
    detail: str | None = None


class InputAudio(_Body):
    """``input_audio``: base64 audio (wav, mp3, flac)."""

    data: str
    format: str | None = None


class ContentPart(_Body):
    """One part of a message's content: text, an image, or audio (the model needs --mmproj for those)."""

    type: Literal["text", "image_url", "input_audio"]
    text: str | None = None
    image_url: ImageURL | str | None = None
    input_audio: InputAudio | None = None

    def as_llama(self) -> dict[str, Any]:
        """The part as ``Llama.create_chat_completion`` takes it."""
        if self.type == "text":
            return {"type": "text", "text": self.text or ""}
        if self.type == "image_url":
            url = self.image_url.url if isinstance(self.image_url, ImageURL) else self.image_url
            if not url:
                raise ValueError("an image_url part needs image_url.url")
            return {"type": "image_url", "image_url": {"url": url}}
        if self.input_audio is None:
            raise ValueError("an input_audio part needs input_audio.data")
        return {"type": "input_audio", "input_audio": self.input_audio.model_dump(exclude_none=True)}


class FunctionCall(_Body):
    """A call the assistant made: the function's name and its JSON arguments."""

    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Body):
    """A tool call in an earlier assistant turn."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    """One turn; ``developer`` is read as ``system``; ``tool`` turns answer earlier tool calls."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = Field(
        default=None, description="An earlier assistant turn's thinking, for templates that show it."
    )

    def as_llama(self) -> dict[str, Any]:
        """The message as the chat template reads it (text parts joined, arguments as JSON text)."""
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self._text(),
        }
        if self.name is not None:
            message["name"] = self.name
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.reasoning_content:
            message["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id or f"call_{index}",
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": call.function.arguments
                        if isinstance(call.function.arguments, str)
                        else json.dumps(call.function.arguments),
                    },
                }
                for index, call in enumerate(self.tool_calls)
            ]
        return message

    def _text(self) -> str | list[dict[str, Any]]:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.type != "text" for part in self.content):
            return [part.as_llama() for part in self.content]  # images: markers go where they are
        return "\n".join(part.text or "" for part in self.content)


class FunctionDefinition(_Body):
    """A function the model may call."""

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    """``{"type": "function", "function": {...}}``."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Body):
    """The function a named ``tool_choice`` forces."""

    name: str


class NamedToolChoice(_Body):
    """``{"type": "function", "function": {"name": ...}}``: call this tool."""

    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(_Body):
    """``response_format.json_schema``: the schema the reply must follow."""

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    """``text``, ``json_object`` (any JSON object, or ``schema``) or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a 'json_schema' object")
        return self

    def json_schema_dict(self) -> dict[str, Any] | None:
        """The schema the reply must follow, or None for plain text."""
        if self.type == "text":
            return None
        if self.type == "json_schema" and self.json_schema is not None:
            return self.json_schema.schema_ or {"type": "object"}
        return self.schema_ or {"type": "object"}

    @property
    def strict(self) -> bool:
        """Whether the reply is validated against the schema after generation too."""
        return self.type == "json_schema" and bool(self.json_schema and self.json_schema.strict)


class ChatCompletionRequest(GenerationBody):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0, description="Preferred to max_tokens.")
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = False
    response_format: ResponseFormat | None = None
    reasoning_format: Literal["none", "auto", "deepseek", "deepseek-legacy"] | None = Field(
        default=None,
        description="A thinking model's reasoning: apart as reasoning_content (auto), or in content (none).",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description='Extra chat template variables, e.g. {"enable_thinking": false}.'
    )
    reasoning_budget: int | None = Field(
        default=None,
        ge=0,
        validation_alias=AliasChoices(
            "reasoning_budget", "reasoning_budget_tokens", "thinking_budget_tokens"
        ),
        description="Most thinking tokens; then the end-of-thinking tag is forced (default: the server's).",
    )
    verbose: bool | None = Field(
        default=None,
        description="Add llama-server's '__verbose' debug object (the rendered prompt, counts) to a "
        "non-streamed reply (default: whether the server runs with --verbose).",
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description="llama-server's shorthand: a JSON schema the reply follows, as response_format "
        "json_schema would set it (response_format wins when both are given).",
    )
    continue_final_message: bool | Literal["content", "reasoning_content"] | None = Field(
        default=None,
        description="Continue the last assistant message instead of starting a new turn; the reply "
        "holds only what is added (default: continue when the last message is the assistant's).",
    )
    add_generation_prompt: bool | None = Field(
        default=None,
        description="Open a new assistant turn at the end of the prompt (default: unless continuing).",
    )

    @model_validator(mode="after")
    def _logprobs_for_top_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")  # OpenAI refuses it the same way
        return self

    def output_schema(self) -> dict[str, Any] | None:
        """The reply's JSON schema (``response_format``, else ``json_schema``), checked to be valid."""
        schema = self.response_format.json_schema_dict() if self.response_format else self.json_schema
        if schema is not None:
            check_schema(schema)
        return schema

    def llama_kwargs(self, end_tokens: Sequence[int]) -> dict[str, Any]:
        """Keyword arguments of ``Llama.acreate_chat_completion``."""
        schema = self.output_schema()
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        kwargs: dict[str, Any] = {
            "messages": [message.as_llama() for message in self.messages],
            "max_tokens": limit,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs if self.logprobs else None,
            "parallel_tool_calls": self.parallel_tool_calls,
            "reasoning_format": self.reasoning_format,
            "chat_template_kwargs": self.chat_template_kwargs,
            "continue_final_message": self.continue_final_message,
            "add_generation_prompt": self.add_generation_prompt,
            "reasoning_budget": self.reasoning_budget,
            **self.common_kwargs(end_tokens),
        }
        if self.tools:
            kwargs["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
            choice = self.tool_choice
            kwargs["tool_choice"] = choice.model_dump() if isinstance(choice, NamedToolChoice) else choice
        if schema is not None:
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {"schema": schema}}
        return kwargs


class ApplyTemplateRequest(ChatCompletionRequest):
    """``POST /apply-template``: a chat body (``add_generation_prompt`` and
    ``continue_final_message`` say how the prompt ends)."""


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text or token ids, or a non-empty list of texts or of token-id lists."
    )
    encoding_format: Literal["float", "base64"] = "float"

    def texts(self) -> list[str | list[int]]:
        """The inputs, each a text or token ids (``ValueError`` when there are none, or an empty one)."""
        given = self.input
        if isinstance(given, str):
            return [given]
        if given and all(isinstance(item, int) for item in given):
            return [[int(cast(int, item)) for item in given]]
        inputs: list[str | list[int]] = [
            item if isinstance(item, str) else [int(t) for t in cast(list[int], item)] for item in given
        ]
        if not inputs or any(isinstance(item, list) and not item for item in inputs):
            raise ValueError("input must hold at least one text or token id, and no empty token list")
        return inputs


class TokenizeRequest(_Body):
    """``POST /tokenize`` (llama-server's fields; ``input`` is accepted for ``content``)."""

    model: str | None = None
    content: str = Field(validation_alias=AliasChoices("content", "input"))
    add_special: bool = Field(default=True, description="Add the model's BOS token where it wants one.")
    parse_special: bool = Field(default=True, description="Read special-token text as special tokens.")
    with_pieces: bool = Field(default=False, description="Return each token's text with its id.")


class DetokenizeRequest(_Body):
    """``POST /detokenize``."""

    model: str | None = None
    tokens: list[int]


class NativePromptObject(_Body):
    """llama-server's JSON prompt: ``{"prompt_string": text or mixed ids, "multimodal_data": [base64]}``."""

    prompt_string: str | list[int | str]
    multimodal_data: list[str] | None = None


NativePrompt = str | list[int | str] | NativePromptObject
"""One llama-server prompt: text, token ids, or both mixed (each string tokenized where it stands),
or a JSON prompt object."""


class NativeCompletionRequest(SamplingBody):
    """``POST /completion`` (llama-server's native fields).

    Fields of samplers this server does not have (DRY, XTC, Mirostat, ...) are ignored,
    as are ``cache_prompt`` (the prefix cache is always used) and ``id_slot``.
    """

    model: str | None = Field(default=None, description="A served model's name; omitted = the default.")
    prompt: str | NativePromptObject | list[int | str | NativePromptObject | list[int | str]] = Field(
        description='Text, token ids, or both mixed ([12, 34, "text", 56]), or {"prompt_string": ...}; '
        "a list of several such prompts (no id at its top level) is a batch, answered with a list."
    )
    n_predict: int = Field(
        default=-1,
        ge=-1,
        validation_alias=AliasChoices("n_predict", "max_tokens"),
        description="Most tokens to generate: -1 until the context ends, 0 none.",
    )
    stream: bool = False
    stop: str | list[str] | None = Field(
        default=None, description="Strings that end the text (not returned)."
    )
    cache_prompt: bool = Field(default=True, description="Accepted; the prefix cache is always used.")
    return_tokens: bool = Field(default=False, description="Return the generated token ids in 'tokens'.")
    n_probs: int = Field(default=0, ge=0, le=INT32_MAX, description="Top alternatives per generated token.")
    post_sampling_probs: bool = Field(
        default=False,
        description="n_probs as probabilities after the sampler chain ('prob', 'top_probs'): only the "
        "candidates it kept, so fewer than n_probs once they sum to 1.",
    )
    return_progress: bool = Field(
        default=False,
        description="Streamed: an event with 'prompt_progress' as the prompt starts and after each batch.",
    )
    timings_per_token: bool = Field(default=False, description="Streamed: 'timings' on every event.")
    json_schema: dict[str, Any] | None = Field(default=None, description="A JSON schema the output follows.")
    logit_bias: list[tuple[int | str, float | bool]] | dict[str, float | bool] | None = Field(
        default=None,
        description='[[token id or text, bias], ...] or {"id or text": bias}; a false bias bans the tokens.',
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_shape(cls, prompt: str | NativePromptObject | list[Any]) -> Any:
        if not isinstance(prompt, list):
            return prompt
        if any(isinstance(part, int) for part in prompt):  # token ids, maybe with text: one prompt
            if not all(isinstance(part, int | str) for part in prompt):
                raise ValueError("a prompt of token ids holds ids and strings, not lists or objects")
        elif not prompt:
            raise ValueError("prompt must not be empty")
        return prompt

    @field_validator("logit_bias")
    @classmethod
    def _no_true_bias(cls, bias: Any) -> Any:
        values = bias.values() if isinstance(bias, dict) else [value for _, value in bias or ()]
        if any(value is True for value in values):
            raise ValueError("a bias is a number, or false to ban the token")
        return bias

    @model_validator(mode="after")
    def _one_constraint(self) -> NativeCompletionRequest:
        if self.grammar is not None and self.json_schema is not None:
            raise ValueError("give either grammar or json_schema, not both")
        return self

    def prompts(self) -> list[NativePrompt]:
        """The prompts to complete: one, unless ``prompt`` is a list of prompts (a batch)."""
        prompt = self.prompt
        if not isinstance(prompt, list) or any(isinstance(part, int) for part in prompt):
            return [cast(NativePrompt, prompt)]  # the validator left no list in a list with ids
        return cast(list[NativePrompt], prompt)

    def stops(self) -> list[str]:
        """The stop strings, as a list (empty ones dropped)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [stop for stop in stops if stop]

    def bias_entries(self) -> list[tuple[int | str, float]]:
        """``logit_bias`` as (token id or text, bias) pairs; ``false`` is -inf, digit keys are ids."""
        if self.logit_bias is None:
            return []
        if isinstance(self.logit_bias, dict):
            pairs: list[tuple[int | str, float | bool]] = [
                (int(key) if key.isdigit() else key, value) for key, value in self.logit_bias.items()
            ]
        else:
            pairs = list(self.logit_bias)
        return [(key, -math.inf if value is False else float(value)) for key, value in pairs]


class NativeEmbeddingRequest(_Body):
    """``POST /embedding`` and ``/embeddings`` (llama-server's native fields; ``input`` for ``content``)."""

    model: str | None = None
    content: str | list[str] = Field(
        validation_alias=AliasChoices("content", "input"), description="A text, or a non-empty list of texts."
    )
    embd_normalize: int = Field(
        default=2,
        ge=-1,
        description="-1 none, 0 max absolute (int16 scale), 1 taxicab, 2 Euclidean, >2 p-norm.",
    )

    @field_validator("content")
    @classmethod
    def _some_text(cls, content: str | list[str]) -> str | list[str]:
        if isinstance(content, list) and not content:
            raise ValueError("content must hold at least one text")
        return content

    def texts(self) -> list[str]:
        """The content as a list of texts."""
        return [self.content] if isinstance(self.content, str) else list(self.content)
