"""Typed exceptions raised by the native layer.

Every failure in llama.cpp surfaces as one of these, with a message that says
what was wrong and how to fix it.  Subclasses also derive from the matching
built-in exception (``ValueError``, ``FileNotFoundError``...) so callers that
catch those keep working.
"""

from __future__ import annotations


class LlamaError(Exception):
    """Base class of every error raised by llamacpp_native."""


class ModelLoadError(LlamaError):
    """A model file could not be loaded (missing, not GGUF, truncated, unsupported)."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model path does not exist or is not a regular file."""


class RpcServerError(ModelLoadError, ConnectionError):
    """An RPC worker (``rpc_servers=``) is unreachable, not an RPC worker, or of another protocol version."""


class LoraError(ModelLoadError):
    """A LoRA adapter could not be loaded: missing, not GGUF, not a LoRA adapter, or for another model."""


class ContextError(LlamaError):
    """A context could not be created or used with the given parameters."""


class ContextOverflowError(ContextError, ValueError):
    """The prompt (plus what must be generated) does not fit in the context."""


class DecodeError(LlamaError):
    """llama_decode failed for a reason other than cancellation."""


class GenerationCancelled(LlamaError):
    """Decoding was aborted on request (stream closed, task cancelled, interrupt)."""


class GrammarError(LlamaError, ValueError):
    """A GBNF grammar or JSON schema is invalid or unsupported."""


class SchemaValidationError(GrammarError):
    """Generated JSON failed a schema rule that the grammar could not enforce."""


class OutputTruncatedError(SchemaValidationError):
    """Structured output reached ``max_tokens`` before its JSON value was complete."""


class TokenizeError(LlamaError, ValueError):
    """Text could not be tokenized, or tokens are outside the vocabulary."""


class ChatTemplateError(LlamaError, ValueError):
    """A chat template could not be loaded, rendered or parsed."""


class NotSupportedError(LlamaError, ValueError):
    """The model cannot do what was asked: ranking without a classifier head, infill without FIM tokens."""


class ClosedError(LlamaError, RuntimeError):
    """The object was used after close()."""


class ProjectorLoadError(ModelLoadError):
    """A projector (mmproj GGUF) could not be loaded: missing, not GGUF, malformed, or for another model."""


class MultimodalError(LlamaError, ValueError):
    """An image or audio input could not be used (no projector loaded, unsupported kind, bad source)."""


class MediaDecodeError(MultimodalError):
    """Image or audio bytes could not be decoded: corrupt, truncated, empty, or an unsupported format."""


class MediaSourceError(MultimodalError):
    """A medium's URL or path was refused (remote fetching off, a file outside the media folder) or failed."""


class MediaMarkerError(MultimodalError):
    """A prompt's media markers and its images (or audio clips) differ in number."""


class MediaTooLargeError(MultimodalError, ContextOverflowError):
    """An image (or audio clip) needs more tokens than the context window, or than one micro-batch."""


class CloseInsideCallError(LlamaError, RuntimeError):
    """``close()`` was called by a thread inside a call on the object it closes (it would wait forever)."""
