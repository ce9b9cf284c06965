"""``POST /infill``'s body (llama-server's fields): the code around the gap, other files, and a
``/completion``'s settings; its answer is a ``/completion``'s."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llamacpp_integrations.server.schemas import NativeCompletionRequest
from llamacpp_native import Llama


class InfillFile(BaseModel):
    """One extra file of context: its text and its name in the project."""

    model_config = ConfigDict(extra="ignore")

    text: str
    filename: str = Field(default="tmp", description="The file's name (llama-server's default: tmp).")


class InfillRequest(NativeCompletionRequest):
    """``POST /infill``: fill the gap between ``input_prefix`` and ``input_suffix``.

    Every ``/completion`` field applies (sampling, ``n_predict``, ``stream``, ``stop``...);
    ``prompt`` is text after the prefix that the answer continues.
    """

    input_prefix: str | list[int] = Field(description="The code before the gap (text or token ids).")
    input_suffix: str | list[int] = Field(description="The code after the gap (text or token ids).")
    input_extra: list[InfillFile] = Field(
        default_factory=list, description="Other files of the project, as context: [{filename, text}]."
    )
    prompt: str = Field(default="", description="Text after the prefix that the answer continues.")

    def infill_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Llama.infill_tokens``, cropped as llama-server crops."""
        return {
            "prefix": self.input_prefix,
            "suffix": self.input_suffix,
            "prompt": self.prompt,
            "extra": [item.model_dump() for item in self.input_extra],
            "fit": True,
            "max_tokens": self.n_predict,
        }

    def with_tokens(self, llama: Llama) -> NativeCompletionRequest:
        """This request as a ``/completion`` of the infill prompt (token ids); raises if the model
        has no FIM tokens."""
        tokens: list[int | str] = list(llama.infill_tokens(**self.infill_kwargs()))
        return NativeCompletionRequest.model_validate(
            {
                **self.model_dump(exclude={"prompt", "input_prefix", "input_suffix", "input_extra"}),
                "prompt": tokens,
            }
        )
