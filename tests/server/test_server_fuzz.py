"""Fuzzing the server with requests generated from its own OpenAPI schema: never a 5xx.

Schemathesis generates valid and invalid requests for every operation; each
answer must be below 500, and every error must have its API's shape (OpenAI's,
or Anthropic's on ``/v1/messages``).  Generation
lengths are capped so the run stays short; derandomized, so a failure reproduces.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import RunningServer

schemathesis = pytest.importorskip("schemathesis")

MAX_EXAMPLES = 100
CAPPED_TOKENS = 4
LENGTH_FIELDS = {
    "/v1/chat/completions": "max_tokens",
    "/v1/completions": "max_tokens",
    "/chat/completions": "max_tokens",
    "/completion": "n_predict",
    "/completions": "n_predict",
    "/v1/responses": "max_output_tokens",
    "/v1/messages": "max_tokens",
    "/infill": "n_predict",
}
"""The field that bounds each generating route's reply."""
ANTHROPIC_PREFIX = "/v1/messages"
TINY_MODELS = {"/v1/rerank": "reranker", "/infill": "coder"}
"""The routes fuzzed again on the tiny server, each on the model that can serve it."""


def _capped(body: Any, field: str) -> Any:
    """The generated body with a short generation, so no example decodes for long."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "max_completion_tokens"}
        body[field] = CAPPED_TOKENS
    return body


def _on_model(body: Any, model: str) -> Any:
    """The generated body sent to ``model`` (a body that is not an object is left as it is)."""
    return {**body, "model": model} if isinstance(body, dict) else body


def _check_error_shape(path: str, body: Any) -> None:
    """OpenAI's error shape everywhere, Anthropic's on the Anthropic routes."""
    if path.startswith(ANTHROPIC_PREFIX):
        assert body["type"] == "error" and {"type", "message"} <= set(body["error"]), body
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body


def test_fuzzed_requests_never_get_a_server_error(server: RunningServer) -> None:
    _fuzz(server, schemathesis.openapi.from_url(f"{server.url}/openapi.json"), {})


def test_fuzzed_rerank_and_infill_on_models_that_serve_them_never_get_a_server_error(
    tiny_server: RunningServer,
) -> None:
    schema = schemathesis.openapi.from_url(f"{tiny_server.url}/openapi.json").include(path=list(TINY_MODELS))
    _fuzz(tiny_server, schema, TINY_MODELS)


def _fuzz(server: RunningServer, schema: Any, models: dict[str, str]) -> None:
    """Every generated request to ``schema``'s operations answers below 500, errors in their API's shape;
    ``models`` sends a route's requests to the model named."""
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    cases = st.one_of(*(schema.as_strategy(generation_mode=mode) for mode in modes))

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def check(case: Any) -> None:
        field = LENGTH_FIELDS.get(case.operation.path)
        if case.operation.method.upper() == "POST" and field is not None:
            case.body = _capped(case.body, field)
        if case.operation.path in models:
            case.body = _on_model(case.body, models[case.operation.path])
        response = case.call(base_url=server.url, timeout=120)
        assert response.status_code < 500, (case.operation.label, case.body, response.text)
        if response.status_code >= 400:
            _check_error_shape(case.operation.path, response.json())

    check()
