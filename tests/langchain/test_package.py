"""The public surface of llamacpp_integrations.langchain."""

from __future__ import annotations

import llamacpp_integrations.langchain as package
from llamacpp_integrations.langchain import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings


def test_all_lists_the_public_names() -> None:
    assert sorted(package.__all__) == ["ChatLlamaCpp", "LlamaCpp", "LlamaCppEmbeddings", "__version__"]
    assert all(hasattr(package, name) for name in package.__all__)
    assert isinstance(package.__version__, str) and package.__version__


def test_classes_are_the_langchain_kinds() -> None:
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import BaseChatModel
    from langchain_core.language_models.llms import LLM

    assert issubclass(LlamaCpp, LLM) and issubclass(ChatLlamaCpp, BaseChatModel)
    assert issubclass(LlamaCppEmbeddings, Embeddings)


def test_integrations_hold_no_c_knowledge() -> None:
    import pathlib

    sources = pathlib.Path(package.__file__).parent.glob("*.py")
    assert not [p.name for p in sources if "_llama_cffi" in p.read_text() or "import ffi" in p.read_text()]
