"""Health, model list, metrics, tokenize/detokenize and the OpenAPI docs."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from server_support import RunningServer, assert_openai_error, metric_values, total

from llamacpp_integrations.server import ServerSettings, create_app


def test_health_is_ok_once_the_model_is_loaded(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_health_is_503_in_openai_shape_until_the_model_is_loaded(model_path: Path) -> None:
    app = create_app(ServerSettings(model=str(model_path)))
    client = TestClient(app)  # outside ``with``: the lifespan (which loads the model) never starts
    assert_openai_error(client.get("/health"), 503, "model_loading")


def test_models_list_the_served_model_by_its_alias(client: openai.OpenAI, model_path: Path) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [str(model_path)]  # no --model_alias: the path as given
    assert models[0].object == "model"


@pytest.mark.parametrize("name", ["path", "file name"])
def test_a_model_can_be_retrieved_by_path_or_file_name(
    client: openai.OpenAI, model_path: Path, name: str
) -> None:
    card = client.models.retrieve(str(model_path) if name == "path" else model_path.name)
    assert card.id == str(model_path)


def test_retrieving_an_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


def test_metrics_count_requests_and_tokens(http: httpx.Client, model_name: str) -> None:
    before = metric_values(http.get("/metrics").text)
    body = {"model": model_name, "prompt": "The sky is", "max_tokens": 3, "ignore_eos": True}
    assert http.post("/v1/completions", json=body).status_code == 200
    response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    started = int(response.headers["Process-Start-Time-Unix"])  # llama-server's header
    assert 0 <= time.time() - started < 24 * 3600
    after = metric_values(response.text)
    assert (
        total(after, "llamacpp_completion_tokens_total")
        == total(before, "llamacpp_completion_tokens_total") + 3
    )
    assert total(after, "llamacpp_prompt_tokens_total") > total(before, "llamacpp_prompt_tokens_total")
    key = 'llamacpp_requests_total{endpoint="/v1/completions",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    for gauge in (
        "llamacpp_slots",
        "llamacpp_busy_slots",
        "llamacpp_queue_length",
        "llamacpp_tokens_per_second",
    ):
        assert any(name.startswith(gauge) for name in after), gauge
    assert total(after, "llamacpp_slots") == 8
    assert total(after, "llamacpp_tokens_per_second") > 0


def test_tokenize_and_detokenize_round_trip(http: httpx.Client) -> None:
    tokens = http.post("/tokenize", json={"content": "Hello world", "add_special": False}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert http.post("/detokenize", json={"tokens": tokens}).json() == {"content": "Hello world"}


def test_tokenize_adds_bos_and_can_return_pieces(http: httpx.Client) -> None:
    plain = http.post("/tokenize", json={"input": "Hello world"}).json()["tokens"]
    pieces = http.post("/tokenize", json={"content": "Hello world", "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == plain
    assert "".join(p["piece"] for p in pieces[1:]) == "Hello world"  # after the BOS token


def test_detokenize_refuses_ids_outside_the_vocabulary(http: httpx.Client) -> None:
    assert_openai_error(http.post("/detokenize", json={"tokens": [10**9]}), 400)


def test_openapi_docs_are_served_without_422_answers(http: httpx.Client) -> None:
    assert http.get("/docs").status_code == 200
    schema = http.get("/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health"):
        assert path in schema["paths"]
    answers = [set(op["responses"]) for path in schema["paths"].values() for op in path.values()]
    assert all("422" not in statuses for statuses in answers)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_each_request_is_logged_in_one_line_without_its_prompt(
    http: httpx.Client, server: RunningServer, model_name: str
) -> None:
    secret = "Zanzibar-7731 is my password"
    body = {"model": model_name, "prompt": secret, "max_tokens": 2, "ignore_eos": True}
    assert http.post("/v1/completions", json=body).status_code == 200
    http.get("/health")  # a later request: the line above has been written by now
    lines = [line for line in server.log().splitlines() if "POST /v1/completions 200 tokens=" in line]
    assert lines and lines[-1].split("tokens=")[1].split()[0].endswith("+2")
    assert secret not in server.log()
