"""The public surface of ``llamacpp_integrations.llama_index``."""

import llamacpp_integrations.llama_index as package


def test_all_names_the_llm_and_the_embedding_model() -> None:
    assert sorted(package.__all__) == ["LlamaCPP", "LlamaCppEmbedding", "LlamaCppRerank", "__version__"]
    for name in package.__all__:
        assert getattr(package, name) is not None
