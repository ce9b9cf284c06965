"""The rerank request body and its two answers: Jina's / llama-server's, or TEI's.

Sent with ``documents``, the answer is ``{"object": "list", "model", "results": [{"index",
"relevance_score", "document"?}], "usage"}``; sent with ``texts`` (Text Embeddings
Inference's name), it is TEI's bare list ``[{"index", "score", "text"?}]``, as llama-server
answers both.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RerankDocument(BaseModel):
    """A document given as an object (Cohere's and Jina's clients may send these)."""

    model_config = ConfigDict(extra="ignore")

    text: str


class RerankRequest(BaseModel):
    """``POST /v1/rerank`` (also ``/rerank``, ``/v1/reranking``, ``/reranking``)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = Field(default=None, description="A served reranker's name; omitted = the default.")
    query: str = Field(description="What the documents are ranked against.")
    documents: list[str | RerankDocument] | None = Field(
        default=None, min_length=1, description="The texts to rank (or objects with 'text')."
    )
    texts: list[str] | None = Field(
        default=None, min_length=1, description="TEI's name for documents: the answer is then TEI's list."
    )
    top_n: int | None = Field(default=None, ge=0, description="Return only the best top_n (default: all).")
    return_documents: bool = Field(default=False, description="Each result carries its document's text.")
    return_text: bool = Field(default=False, description="TEI: each result carries its text.")

    @model_validator(mode="after")
    def _one_list(self) -> RerankRequest:
        if (self.documents is None) == (self.texts is None):
            raise ValueError("give the texts to rank as 'documents' (or TEI's 'texts'), one of the two")
        return self

    @property
    def tei(self) -> bool:
        """Whether the client speaks TEI's dialect (it sent ``texts``)."""
        return self.texts is not None

    def document_texts(self) -> list[str]:
        """The documents as plain texts, in order."""
        items = self.texts if self.texts is not None else self.documents or []
        return [item if isinstance(item, str) else item.text for item in items]

    @property
    def with_text(self) -> bool:
        """Whether each result carries its document."""
        return self.return_text if self.tei else self.return_documents

    def answer(self, result: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        """``Llama.create_rerank``'s result in the client's dialect."""
        if not self.tei:
            return result
        answer = []
        for item in result["results"]:
            entry = {"index": item["index"], "score": item["relevance_score"]}
            if self.return_text:
                entry["text"] = item["document"]["text"]
            answer.append(entry)
        return answer
