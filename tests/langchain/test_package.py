"""The public surface of llamacpp_integrations.langchain."""

from __future__ import annotations

import subprocess
import sys

import pytest

import llamacpp_integrations.langchain as package
from llamacpp_integrations.langchain import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings


def test_all_lists_the_public_names() -> None:
    assert sorted(package.__all__) == [
        "ChatLlamaCpp",
        "LlamaCpp",
        "LlamaCppEmbeddings",
        "LlamaCppRerank",
        "__version__",
    ]
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


HIDE_AND_IMPORT = """
import sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {hidden!r}:
            raise ModuleNotFoundError(name)

sys.meta_path.insert(0, Hide())
try:
    import {integration}
except ImportError as error:
    print(error)
"""


@pytest.mark.parametrize(
    ("integration", "hidden", "extra"),
    [
        ("llamacpp_integrations.langchain", "langchain_core", "langchain"),
        ("llamacpp_integrations.llama_index", "llama_index", "llama-index"),
    ],
)
def test_an_integration_without_its_extra_names_the_extra(integration: str, hidden: str, extra: str) -> None:
    code = HIDE_AND_IMPORT.format(hidden=hidden, integration=integration)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install 'llamacpp-integrations[{extra}]'" in result.stdout, result.stdout + result.stderr


def test_the_core_needs_no_framework() -> None:
    code = HIDE_AND_IMPORT.format(hidden="langchain_core", integration="llamacpp_native") + (
        "\nimport llamacpp_native; print('core ok', 'langchain_core' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "core ok False" in result.stdout, result.stdout + result.stderr
