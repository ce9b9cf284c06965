"""LangChain and LlamaIndex integrations on llamacpp_native.

Import the framework you use:
``from llamacpp_integrations.langchain import LlamaCpp, ChatLlamaCpp, LlamaCppEmbeddings`` or
``from llamacpp_integrations.llama_index import LlamaCPP, LlamaCppEmbedding``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llamacpp-integrations")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
