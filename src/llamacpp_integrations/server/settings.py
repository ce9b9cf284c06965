"""Server settings: command-line flags (both spellings), environment variables and a config file.

Precedence, highest first: command line, environment (``LLAMACPP_<NAME>``, e.g.
``LLAMACPP_API_KEY``), the config file's top-level keys, the defaults.  The
config file (JSON or YAML) may also list several models under ``models``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llamacpp_native import DraftModel, PromptLookupDecoding
from llamacpp_native.binding.rpc import parse_endpoint
from llamacpp_native.chat.media import MediaPolicy
from llamacpp_native.chat.templates import builtin_template_names
from llamacpp_native.errors import RpcServerError

ENV_PREFIX = "LLAMACPP_"


MODEL_HELP = "Path of a local .gguf file (nothing is ever downloaded)."


class ModelOptions(BaseModel):
    """How a model is named and loaded (shared by ``--model`` and the config file's models)."""

    model_alias: str | None = Field(
        default=None,
        description="The name clients use in 'model' (default: the path as given); several, comma-separated, "
        "are all accepted, and the first in sorted order is the one reported (as llama-server's --alias).",
    )
    model_tags: str | None = Field(
        default=None,
        description="Comma-separated tags listed with the model in /v1/models (llama-server's --tags).",
    )
    n_ctx: int = Field(default=2048, ge=1, description="Context window in tokens, shared by all slots.")
    n_parallel: int = Field(default=4, ge=1, description="Slots: requests decoded together in one batch.")
    n_ctx_per_slot: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens one request may hold, prompt and reply (llama-server's per-slot context, "
        "e.g. n_ctx / n_parallel); longer prompts get exceed_context_size_error (default: all of n_ctx).",
    )
    n_threads: int | None = Field(default=None, ge=1, description="CPU threads (default: all cores).")
    n_batch: int = Field(default=512, ge=1, description="Prompt tokens decoded per step.")
    n_gpu_layers: int = Field(
        default=0, ge=-1, description="Layers offloaded to the GPUs or RPC workers (-1 = all)."
    )
    rpc: str | None = Field(
        default=None,
        description="Comma-separated llamacpp-rpc-server workers (host:port,...) that take layers as "
        "n_gpu_layers and tensor_split say. No authentication: trusted networks only.",
    )
    tensor_split: str | None = Field(
        default=None, description="Comma-separated share of the offloaded layers per device, e.g. 3,1."
    )
    split_mode: str = Field(
        default="layer",
        pattern="^(layer|row|none)$",
        description="Split layers ('layer') or rows ('row') across devices, or not ('none').",
    )
    main_gpu: int = Field(default=0, ge=0, description="The device used with --split_mode none.")
    flash_attn: bool | None = Field(default=None, description="Flash attention (default: llama.cpp decides).")
    offload_kqv: bool = Field(default=True, description="Keep the KV cache with the offloaded layers.")
    type_k: str | None = Field(default=None, description="KV cache type of K (f16, q8_0, ...; default f16).")
    type_v: str | None = Field(
        default=None, description="KV cache type of V (f16, q8_0, ...; quantized needs flash attention)."
    )
    chat_format: str | None = Field(
        default=None, description="Chat template to use when the GGUF has none (e.g. chatml, gemma)."
    )
    chat_template_file: str | None = Field(
        default=None, description="A Jinja chat template file used instead of the model's own."
    )
    chat_template: str | None = Field(
        default=None,
        description="A chat template used instead of the model's own: Jinja text, or the name of one of "
        "llama.cpp's built-in templates (llama3, command-r, chatml, ...; no tools with those).",
    )
    reasoning_format: str = Field(
        default="auto",
        pattern="^(none|auto|deepseek|deepseek-legacy)$",
        description="A thinking model's reasoning: apart as reasoning_content (auto), or in content (none).",
    )
    reasoning: str = Field(
        default="auto",
        pattern="^(on|off|auto)$",
        description="Thinking in chat replies (llama-server's --reasoning): 'on' or 'off' sets the "
        "template's enable_thinking for requests that do not set it; 'auto' leaves it to the template.",
    )
    reasoning_budget: int = Field(
        default=-1,
        ge=-1,
        description="Most thinking tokens per reply, then the end tag is forced (-1: no limit).",
    )
    seed: int = Field(default=0xFFFFFFFF, description="Default sampling seed (0xFFFFFFFF = random).")
    temp: float | None = Field(
        default=None,
        ge=0,
        description="Temperature of the requests that set none, on every route (llama-server's --temp; "
        "default: 0.8 for completions, 0.2 for chat).",
    )
    n_predict: int = Field(
        default=-1,
        ge=-1,
        description="Tokens a /completion request generates when it sets no n_predict "
        "(llama-server's --n-predict; -1: until the context ends).",
    )
    pooling: str | None = Field(
        default=None,
        pattern="^(none|mean|cls|last|rank)$",
        description="Pooling of embeddings (default: the model's own); 'rank' serves a classifier GGUF "
        "that does not declare it as a reranker on /v1/rerank (llama-server's --reranking).",
    )
    mmproj: str | None = Field(
        default=None,
        description="The model's multimodal projector (mmproj .gguf): chat messages may then carry "
        "image_url parts (and input_audio where it has an audio encoder).",
    )
    media_path: str | None = Field(
        default=None,
        description="Folder from which file:// image URLs are read (default: none, only data: URLs).",
    )
    allow_remote_media: bool = Field(
        default=False,
        description="Fetch http(s) image URLs (default: refused). The server then opens connections "
        "its clients choose (SSRF): only where that is acceptable.",
    )
    media_max_bytes: int = Field(default=10_000_000, ge=1, description="Largest image or audio file.")
    model_draft: str | None = Field(
        default=None,
        description="A smaller .gguf with the same tokenizer that guesses tokens ahead (speculative "
        "decoding; the output stays exactly the same).",
    )
    spec_type: str | None = Field(
        default=None,
        pattern="^(none|draft|draft-simple|ngram|ngram-simple)$",
        description="Speculative decoding without a draft model: 'ngram' guesses from the prompt and "
        "reply so far (default: 'draft' with --model_draft, else none).",
    )
    draft_max: int | None = Field(
        default=None, ge=1, le=64, description="Tokens guessed ahead per step (default 8 draft, 10 ngram)."
    )
    media_timeout: float = Field(default=10.0, gt=0, description="Seconds an http(s) image fetch may take.")

    @field_validator("reasoning", mode="before")
    @classmethod
    def _reasoning_word(cls, value: Any) -> Any:
        """llama-server's spellings of on and off (``true``, ``1``, ``enabled``, ...) are taken too."""
        lowered = str(value).strip().lower() if isinstance(value, (str, bool)) else value
        if lowered in ("true", "1", "enabled"):
            return "on"
        if lowered in ("false", "0", "disabled"):
            return "off"
        return lowered

    def template_defaults(self) -> dict[str, Any]:
        """Chat template variables every chat request gets unless it sets them (``--reasoning``)."""
        return {} if self.reasoning == "auto" else {"enable_thinking": self.reasoning == "on"}

    @field_validator("chat_template")
    @classmethod
    def _check_template_name(cls, value: str | None) -> str | None:
        """A text without Jinja markup must name a built-in template (a typo is not a template)."""
        if value is not None and "{{" not in value and "{%" not in value:
            names = builtin_template_names()
            if value not in names:
                raise ValueError(f"{value!r} is not Jinja text nor a built-in template: {', '.join(names)}")
        return value

    @model_validator(mode="after")
    def _one_template(self) -> ModelOptions:
        if self.chat_template is not None and self.chat_template_file is not None:
            raise ValueError("give chat_template or chat_template_file, not both")
        return self

    @field_validator("chat_template_file")
    @classmethod
    def _check_template_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"chat template file not found: {value}")
        return value

    @field_validator("model_draft")
    @classmethod
    def _check_draft_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"draft model file not found: {value}")
        return value

    @model_validator(mode="after")
    def _check_speculation(self) -> ModelOptions:
        if self.spec_type in ("draft", "draft-simple") and self.model_draft is None:
            raise ValueError("--spec_type draft needs --model_draft (a draft .gguf)")
        return self

    @field_validator("rpc")
    @classmethod
    def _check_rpc(cls, value: str | None) -> str | None:
        for address in (value or "").split(","):
            if address.strip():
                try:
                    parse_endpoint(address)
                except RpcServerError as error:
                    raise ValueError(str(error)) from None
        return value

    @field_validator("tensor_split")
    @classmethod
    def _check_tensor_split(cls, value: str | None) -> str | None:
        try:
            [float(s) for s in (value or "").split(",") if s.strip()]
        except ValueError:
            raise ValueError(
                f"tensor_split must be comma-separated numbers, e.g. 3,1, not {value!r}"
            ) from None
        return value


class ModelSettings(ModelOptions):
    """One servable model: its file, the name clients use, and how it is loaded."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description=MODEL_HELP)

    @property
    def alias(self) -> str:
        """The model's public name: the first of its aliases in sorted order, else its path."""
        return min(self.aliases, default=self.model)

    @property
    def aliases(self) -> list[str]:
        """The names ``model_alias`` gives the model, sorted (none: it goes by its path)."""
        return sorted({name.strip() for name in (self.model_alias or "").split(",") if name.strip()})

    @property
    def tags(self) -> list[str]:
        """The model's ``model_tags``, in the order given."""
        return [tag.strip() for tag in (self.model_tags or "").split(",") if tag.strip()]

    def names(self) -> set[str]:
        """Every name a request may use for this model: its aliases, the path, the file name."""
        return {*self.aliases, self.model, Path(self.model).name}

    def llama_kwargs(self, verbose: bool) -> dict[str, Any]:
        """Keyword arguments for ``llamacpp_native.Llama``."""
        media = {"mmproj", "media_path", "allow_remote_media", "media_max_bytes", "media_timeout"}
        speculative = {"model_draft", "spec_type", "draft_max"}
        options = self.model_dump(
            exclude={
                "model",
                "model_alias",
                "model_tags",
                "rpc",
                "tensor_split",
                "chat_template_file",
                "n_predict",
                "reasoning",
                "temp",
            }
            | media
            | speculative
        )
        options["draft_model"] = self.speculation()
        options["temperature"] = self.temp
        if self.chat_template_file:
            options["chat_template"] = Path(self.chat_template_file).read_text(encoding="utf-8")
        if self.rpc:
            options["rpc_servers"] = [s.strip() for s in self.rpc.split(",") if s.strip()]
        if self.tensor_split:
            options["tensor_split"] = [float(s) for s in self.tensor_split.split(",") if s.strip()]
        if self.mmproj:
            options["mmproj_path"] = self.mmproj
            options["media_policy"] = MediaPolicy(
                allow_files=self.media_path is not None,
                file_root=Path(self.media_path) if self.media_path is not None else None,
                allow_remote=self.allow_remote_media,
                max_bytes=self.media_max_bytes,
                timeout=self.media_timeout,
            )
        return {**options, "verbose": verbose}

    def speculation(self) -> DraftModel | PromptLookupDecoding | None:
        """Speculative decoding as ``--model_draft``, ``--spec_type`` and ``--draft_max`` ask for it."""
        guesses = {} if self.draft_max is None else {"num_pred_tokens": self.draft_max}
        if self.spec_type in ("ngram", "ngram-simple"):
            return PromptLookupDecoding(**guesses)
        if self.model_draft is None or self.spec_type == "none":
            return None
        return DraftModel(self.model_draft, **guesses)


class ServerSettings(BaseSettings, ModelOptions):
    """Everything the server is started with.  ``--model`` (or ``models``) names what it serves."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    model: str | None = Field(default=None, description=MODEL_HELP)
    host: str = Field(
        default="127.0.0.1",
        description="Address to bind (loopback by default); several, comma-separated, are all served "
        "(e.g. 127.0.0.1,::1).",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on.")
    api_key: str | None = Field(
        default=None, description="If set, /v1/*, /tokenize, /detokenize and /metrics need 'Bearer <key>'."
    )
    config_file: str | None = Field(
        default=None, description="JSON or YAML file with server settings and a 'models' list."
    )
    models: list[ModelSettings] = Field(
        default_factory=list, description="Models to serve (from the config file); loaded on first use."
    )
    models_max: int = Field(default=1, ge=1, description="Most models kept loaded at once (LRU).")
    sleep_idle_seconds: float | None = Field(
        default=None,
        ge=0,
        description="Unload a model no request has used for this long, freeing its memory; the next "
        "request that needs it loads it again (/health, /props, /models and /metrics do not). "
        "Default: never.",
    )
    max_queue: int = Field(
        default=64, ge=0, description="Requests that may wait for a slot per model; more get 503."
    )
    max_body_bytes: int = Field(default=10_000_000, ge=1, description="Largest request body; more gets 413.")
    cors_origins: str | None = Field(
        default=None,
        description="Comma-separated origins whose web pages may call the server (CORS), e.g. "
        "https://app.example.com; 'localhost' for any port of localhost, 127.0.0.1 or [::1] (as "
        "llama-server's keyword); * for any (default: none, no CORS headers).",
    )
    verbose: bool = Field(default=False, description="Debug logging, llama.cpp's log included.")
    metrics_endpoint: bool = Field(
        default=True, description="Serve GET /metrics (false: 501, as llama-server without --metrics)."
    )
    slots_endpoint: bool = Field(
        default=True, description="Serve GET /slots (false: 501, as llama-server's --no-slots)."
    )
    strict_model_name: bool = Field(
        default=False,
        description="Answer 404 to a model name that is not served, as OpenAI does (by default a server "
        "of one model answers to any name, as llama-server does).",
    )

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, value: str | None) -> str | None:
        for origin in cls.origins_of(value):
            if origin not in ("*", "localhost") and not origin.startswith(("http://", "https://")):
                raise ValueError(f"a CORS origin is *, localhost or scheme://host[:port], not {origin!r}")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not any(host.strip() for host in value.split(",")):
            raise ValueError("host needs at least one address")
        return value

    @property
    def hosts(self) -> list[str]:
        """The addresses in ``host`` (IPv6 ones without brackets)."""
        return [host.strip().strip("[]") for host in self.host.split(",") if host.strip()]

    @staticmethod
    def origins_of(value: str | None) -> list[str]:
        """The origins in a comma-separated ``cors_origins`` (trailing slashes dropped)."""
        return [origin.strip().rstrip("/") for origin in (value or "").split(",") if origin.strip()]

    def model_list(self) -> list[ModelSettings]:
        """The models to serve: ``--model`` first (the default), then the config file's."""
        listed = list(self.models)
        if self.model is not None:
            listed.insert(0, ModelSettings(**self.model_dump(include=set(ModelSettings.model_fields))))
        return listed


_FLAGS = ["model"] + [name for name in ServerSettings.model_fields if name not in ("model", "models")]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a JSON (``.json``) or YAML file; ``ValueError`` if it is not one."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"config file {path} does not parse: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """Flags for every setting, in llama-cpp-python's spelling and the dashed one."""
    parser = argparse.ArgumentParser(
        prog="python -m llamacpp_integrations.server",
        description="An OpenAI-compatible server for local GGUF models, with continuous batching.",
        epilog=f"Every flag can also be set as an environment variable {ENV_PREFIX}<NAME>, "
        f"e.g. {ENV_PREFIX}API_KEY.",
        argument_default=argparse.SUPPRESS,
    )
    for name in _FLAGS:
        field = ServerSettings.model_fields[name]
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        kinds = [t for t in get_args(field.annotation) if t is not type(None)] or [field.annotation]
        kind = kinds[0]
        help_text = f"{field.description} [env {ENV_PREFIX}{name.upper()}]"
        if kind is bool:
            parser.add_argument(*flags, dest=name, nargs="?", const=True, type=_parse_bool, help=help_text)
        else:
            parser.add_argument(*flags, dest=name, type=kind, metavar=name.upper(), help=help_text)
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> ServerSettings:
    """Settings from the command line, the environment and the config file; exits on bad input."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    try:
        settings = _settings_from(given)
    except (OSError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        parser.error(_describe(error))
    if not settings.model_list():
        parser.error("no model to serve: pass --model PATH, or a --config_file that lists models")
    return settings


def _settings_from(given: dict[str, Any]) -> ServerSettings:
    """``ServerSettings`` from explicit values, the environment, then the config file they name."""
    settings = ServerSettings(**given)
    if settings.config_file is None:
        return settings
    explicit = settings.model_dump(include=settings.model_fields_set)
    return ServerSettings(**{**load_config_file(settings.config_file), **explicit})


def _describe(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in error.errors()
        )
    return str(error)
