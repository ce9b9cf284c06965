"""LlamaIndex integration: ``LlamaCPP`` (a FunctionCallingLLM) and ``LlamaCppEmbedding``."""

from importlib.metadata import PackageNotFoundError, version

from llamacpp_integrations.llama_index.embeddings import LlamaCppEmbedding
from llamacpp_integrations.llama_index.llms import LlamaCPP

try:
    __version__ = version("llamacpp-integrations")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["LlamaCPP", "LlamaCppEmbedding", "__version__"]
