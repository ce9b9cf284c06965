"""LangChain's standard test suites, on the real default model (Gemma 3 270M base)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests, EmbeddingsIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from llamacpp_integrations.langchain import ChatLlamaCpp, LlamaCppEmbeddings
from llamacpp_native import OutputTruncatedError
from mtmd_support import noise_png

NO_MODEL_FILE = "/nonexistent/model.gguf"  # unit suites construct objects; nothing may be loaded


class TestChatLlamaCppUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatLlamaCpp

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model_path": NO_MODEL_FILE}


class TestLlamaCppEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return LlamaCppEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_path": NO_MODEL_FILE}


WANTS_A_SECOND_CALL = (
    "after writing magic_function's argument 3 the 270M base model may prefer '}},' (a second call); with "
    "one call per turn (the default, parallel_tool_calls=False) the grammar forbids that, and its best "
    "allowed continuation may then extend the number (300 instead of 3)"
)

BEYOND_A_270M_BASE_MODEL = {
    "test_json_mode": (
        "json_mode constrains the reply to some JSON object only; the suite's prompt does not name the "
        "fields and the 270M base model answers {}"
    ),
    "test_tool_calling": WANTS_A_SECOND_CALL,
    "test_tool_calling_async": WANTS_A_SECOND_CALL,
    "test_agent_loop": (
        "without examples the 270M base model does not decide by itself to call a tool (tool_choice 'auto'); "
        "test_chat_models.py shows auto tool calls coming out of a few-shot prompt"
    ),
    "test_unicode_tool_call_integration": (
        "the 270M base model may fill customer_name with something other than the Chinese name in the "
        "request (the grammar admits any string there), and an unbounded argument may not close within the "
        "suite's 32 tokens"
    ),
}
"""Standard tests that need judgement this model lacks, and why (they still run: an XPASS is reported)."""

MAY_LOOP_IN_A_JSON_STRING = (
    "the suite's Joke schemas leave their strings unbounded and each reply has 32 tokens: a greedy 270M base "
    "model may repeat itself inside a JSON string until they run out (where it does depends on the CPU's "
    "kernels), and with_structured_output then raises OutputTruncatedError naming max_tokens, as "
    "test_chat_models.py checks on its own"
)
UNBOUNDED_STRUCTURED_OUTPUT = {
    "test_structured_output",
    "test_structured_output_async",
    "test_structured_output_optional_param",
    "test_structured_output_pydantic_2_v1",
}
"""Standard tests that may run out of tokens on some CPU; an xfail for OutputTruncatedError only."""


def _serve_a_local_png(url: str, **_kwargs: Any) -> httpx.Response:
    return httpx.Response(200, content=noise_png(7), request=httpx.Request("GET", url))


@pytest.fixture(scope="session")
def end_of_turn_bias(lc_params: dict[str, Any]) -> dict[int, float]:
    """A logit bias against ending the turn (Gemma's <end_of_turn> and <eos>)."""
    llama = ChatLlamaCpp(**lc_params).llama
    return {llama.tokenize("<end_of_turn>", add_bos=False, special=True)[0]: -10.0, llama.token_eos(): -10.0}


class TestChatLlamaCppIntegration(ChatModelIntegrationTests):
    """The chat suite on Gemma 3 270M base, greedy, 32 tokens per reply.

    A base model answers the suite's bare "Hello" by ending its turn at once,
    and the suite requires a non-empty reply; so the test model is biased
    against ending its turn (a grammar still ends it after a complete tool
    call or JSON object).  Tests needing judgement a 270M base model lacks are
    marked xfail with the reason, and those whose unbounded strings may use up
    the 32 tokens xfail on ``OutputTruncatedError`` only.
    """

    @pytest.fixture(autouse=True)
    def _real_model(
        self,
        request: pytest.FixtureRequest,
        lc_params: dict[str, Any],
        end_of_turn_bias: dict[int, float],
        projector_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        self._params = {
            **lc_params,
            "max_tokens": 32,
            "model_kwargs": {"logit_bias": end_of_turn_bias},
            "mmproj_path": str(projector_path),
        }
        # The image tests download a PNG from GitHub; tests never touch the network, so they
        # get a PNG of their own from the same call.
        monkeypatch.setattr(httpx, "get", _serve_a_local_png)
        name = request.node.originalname
        if name in BEYOND_A_270M_BASE_MODEL:
            request.applymarker(pytest.mark.xfail(reason=BEYOND_A_270M_BASE_MODEL[name], strict=False))
        elif name in UNBOUNDED_STRUCTURED_OUTPUT:
            request.applymarker(
                pytest.mark.xfail(reason=MAY_LOOP_IN_A_JSON_STRING, strict=False, raises=OutputTruncatedError)
            )

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatLlamaCpp

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return self._params

    @property
    def supports_model_override(self) -> bool:
        # An instance is bound to one local GGUF file; another file is another ChatLlamaCpp.
        return False

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return True  # through the tiny test projector (mmproj_path)

    @property
    def supports_image_tool_message(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        # Remote image URLs are refused by default (no fetching a URL a prompt names: SSRF);
        # the suite's URL is a GitHub one, and tests never touch the network anyway.
        return False


class TestLlamaCppEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _real_model(self, lc_params: dict[str, Any]) -> None:
        self._params = lc_params

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return LlamaCppEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        keep = ("model_path", "n_ctx", "n_threads", "verbose")
        return {k: v for k, v in self._params.items() if k in keep}
