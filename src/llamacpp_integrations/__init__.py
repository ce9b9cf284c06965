"""LangChain and LlamaIndex integrations (placeholder during bootstrap)."""
