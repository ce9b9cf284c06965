"""LlamaIndex integration: ``LlamaCPP`` (a FunctionCallingLLM), ``LlamaCppEmbedding`` and ``LlamaCppRerank``
(a node postprocessor)."""

from importlib.metadata import PackageNotFoundError, version

from llamacpp_integrations._extras import require_extra

require_extra("llama-index", "llama_index.core", "jsonschema")

from llamacpp_integrations.llama_index.embeddings import LlamaCppEmbedding  # noqa: E402
from llamacpp_integrations.llama_index.llms import LlamaCPP  # noqa: E402
from llamacpp_integrations.llama_index.rerank import LlamaCppRerank  # noqa: E402

try:
    __version__ = version("llamacpp-integrations")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["LlamaCPP", "LlamaCppEmbedding", "LlamaCppRerank", "__version__"]
