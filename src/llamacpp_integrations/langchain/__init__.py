"""LangChain integration: local GGUF models through llama.cpp.

The maintained successor of langchain-community's ``LlamaCpp``,
``ChatLlamaCpp`` and ``LlamaCppEmbeddings``, with the same parameters.
"""

from importlib.metadata import PackageNotFoundError, version

from llamacpp_integrations._extras import require_extra

require_extra("langchain", "langchain_core", "jsonschema")

from llamacpp_integrations.langchain.chat_models import ChatLlamaCpp  # noqa: E402
from llamacpp_integrations.langchain.embeddings import LlamaCppEmbeddings  # noqa: E402
from llamacpp_integrations.langchain.llms import LlamaCpp  # noqa: E402
from llamacpp_integrations.langchain.rerank import LlamaCppRerank  # noqa: E402

try:
    __version__ = version("llamacpp-integrations")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["ChatLlamaCpp", "LlamaCpp", "LlamaCppEmbeddings", "LlamaCppRerank", "__version__"]
