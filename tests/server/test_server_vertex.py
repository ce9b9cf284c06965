"""Vertex AI's prediction container contract (``AIP_MODE=PREDICTION``): a predict route whose
instances are requests to the server's other routes, and the health route Vertex AI names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from server_support import RunningServer, assert_openai_error

from llamacpp_integrations.server.vertex import VertexRoutes, format_name

KEY = "sesame"
CHAT = {
    "@requestFormat": "chatCompletions",
    "messages": [{"role": "user", "content": "Say yes."}],
    "max_tokens": 4,
    "grammar": 'root ::= "yes"',
}


@pytest.fixture(scope="module")
def vertex_server(start_server: Callable[..., RunningServer], model_path: Path) -> Iterator[RunningServer]:
    env = {"AIP_MODE": "PREDICTION", "AIP_PREDICT_ROUTE": "predict", "AIP_HEALTH_ROUTE": "/ping"}
    server = start_server("--model", str(model_path), "--n_ctx", "512", env={**env, "LLAMACPP_API_KEY": KEY})
    yield server
    server.stop()


def _predict(server: RunningServer, body: object, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/predict", json=body, headers=headers, timeout=120)


def test_each_instance_is_answered_by_the_route_it_names(vertex_server: RunningServer) -> None:
    completion = {"@requestFormat": "/completion", "prompt": "Hi", "n_predict": 2, "stream": True}
    unknown = {"@requestFormat": "teleport"}
    response = _predict(vertex_server, {"instances": [CHAT, completion, unknown, "not an object"]})
    assert response.status_code == 200, response.text
    chat, native, missing, malformed = response.json()["predictions"]
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["content"] == "yes"
    assert native["stop"] is True and native["tokens_predicted"] == 2  # never a stream
    assert missing["error"]["type"] == "invalid_request_error" and "teleport" in missing["error"]["message"]
    assert malformed["error"]["type"] == "invalid_request_error"


def test_the_predict_route_needs_the_key_and_an_instances_list(vertex_server: RunningServer) -> None:
    assert_openai_error(_predict(vertex_server, {"instances": [CHAT]}, key=None), 401, "invalid_api_key")
    assert_openai_error(_predict(vertex_server, {"instance": [CHAT]}), 400)
    assert_openai_error(_predict(vertex_server, {"instances": [CHAT] * 129}), 400)


def test_the_named_health_route_answers_like_health(vertex_server: RunningServer) -> None:
    assert httpx.get(f"{vertex_server.url}/ping", timeout=60).status_code == 200


def test_the_routes_come_from_aip_variables_only_in_prediction_mode() -> None:
    assert VertexRoutes.from_environment({}) is None
    routes = VertexRoutes.from_environment({"AIP_MODE": "PREDICTION", "AIP_HTTP_PORT": "8080"})
    assert routes == VertexRoutes(predict="/predict", health=None, port=8080)
    assert format_name("/v1/chat/completions") == format_name("/chat/completions") == "chatCompletions"
    assert format_name("/apply-template") == "applyTemplate"
