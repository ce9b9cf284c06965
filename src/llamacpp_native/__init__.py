"""llamacpp_native: llama.cpp bound with cffi, and the generation engine on top.

``Llama`` is the high-level, OpenAI-shaped API; ``Model`` and ``Context`` are
the low-level objects that own llama.cpp's handles.
"""

import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from llamacpp_native.api.base import LoraSpec, SamplingOptions
from llamacpp_native.api.chat_handlers import Llava15ChatHandler, MultimodalChatHandler
from llamacpp_native.api.llama import Llama
from llamacpp_native.api.rerank import RerankResult
from llamacpp_native.binding._library import NATIVE_DIR, ffi, lib
from llamacpp_native.binding.context import Context
from llamacpp_native.binding.lora import LoraAdapter
from llamacpp_native.binding.model import Model
from llamacpp_native.binding.offload import BufferInfo, DeviceInfo, OffloadReport
from llamacpp_native.binding.sampling import GrammarSpec, SamplerChain, SamplingParams
from llamacpp_native.binding.vocab import FimTokens, Vocab
from llamacpp_native.chat.media import MediaPolicy
from llamacpp_native.chat.multimodal import Bitmap, MediaChunk, Multimodal, MultimodalPrompt
from llamacpp_native.chat.templates import ChatTemplates, RenderedChat, parse_chat_output
from llamacpp_native.engine.core import Engine
from llamacpp_native.engine.speculative import DraftModel, PromptLookupDecoding
from llamacpp_native.engine.types import (
    Cancellation,
    Chunk,
    GenerationRequest,
    GenerationResult,
    TokenLogprob,
)
from llamacpp_native.errors import (
    ChatTemplateError,
    ClosedError,
    CloseInsideCallError,
    ContextError,
    ContextOverflowError,
    DecodeError,
    GenerationCancelled,
    GrammarError,
    LlamaError,
    LoraError,
    MediaDecodeError,
    MediaMarkerError,
    MediaSourceError,
    MediaTooLargeError,
    ModelLoadError,
    ModelNotFoundError,
    MultimodalError,
    NotSupportedError,
    OutputTruncatedError,
    ProjectorLoadError,
    RpcServerError,
    SchemaValidationError,
    TokenizeError,
)
from llamacpp_native.events import (
    Event,
    Finish,
    LogprobsDelta,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from llamacpp_native.grammar.gbnf import LlamaGrammar, json_schema_to_grammar, read_grammar

LlamaPromptLookupDecoding = PromptLookupDecoding
"""llama-cpp-python's name for n-gram lookup drafting (``Llama(draft_model=LlamaPromptLookupDecoding())``)."""

try:
    __version__ = version("llamacpp-integrations")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def build_info() -> dict[str, Any]:
    """What this build compiled in: ``amx_kernels``, ``runtime_libraries``, ``ggml_cpu_compile_options``."""
    return dict(json.loads((NATIVE_DIR / "build_info.json").read_text()))


def system_info() -> str:
    """llama.cpp's description of the CPU features and backends compiled in."""
    return str(ffi.string(lib.llama_print_system_info()).decode())


__all__ = [
    "Cancellation",
    "build_info",
    "ChatTemplateError",
    "ChatTemplates",
    "Chunk",
    "ClosedError",
    "CloseInsideCallError",
    "Context",
    "ContextError",
    "ContextOverflowError",
    "DecodeError",
    "Engine",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "GrammarError",
    "GrammarSpec",
    "Llama",
    "LlamaPromptLookupDecoding",
    "DraftModel",
    "PromptLookupDecoding",
    "LlamaError",
    "LlamaGrammar",
    "LoraAdapter",
    "LoraError",
    "LoraSpec",
    "Model",
    "OffloadReport",
    "DeviceInfo",
    "BufferInfo",
    "ModelLoadError",
    "ModelNotFoundError",
    "NotSupportedError",
    "RerankResult",
    "FimTokens",
    "RenderedChat",
    "SamplerChain",
    "SamplingOptions",
    "SamplingParams",
    "OutputTruncatedError",
    "RpcServerError",
    "SchemaValidationError",
    "TokenLogprob",
    "TokenizeError",
    "Vocab",
    "__version__",
    "json_schema_to_grammar",
    "parse_chat_output",
    "read_grammar",
    "system_info",
    # images and audio in
    "Bitmap",
    "Llava15ChatHandler",
    "MediaChunk",
    "MediaDecodeError",
    "MediaMarkerError",
    "MediaPolicy",
    "MediaSourceError",
    "MediaTooLargeError",
    "Multimodal",
    "MultimodalChatHandler",
    "MultimodalError",
    "MultimodalPrompt",
    "ProjectorLoadError",
    # the typed output events every front end renders
    "Event",
    "Finish",
    "LogprobsDelta",
    "ReasoningDelta",
    "TextDelta",
    "ToolCallDelta",
    "Usage",
]
