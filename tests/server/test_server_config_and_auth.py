"""A server started from a YAML config file with an API key from the environment: auth, several
models (lazy, LRU), and the queue bound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from server_support import RunningServer, assert_openai_error, first_event

KEY = "sesame"


@pytest.fixture(scope="module")
def keyed_server(
    start_server: Callable[..., RunningServer], model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> RunningServer:
    """Two aliases of the model, one slot each, at most one loaded, one request may wait."""
    model = {"model": str(model_path), "n_ctx": 1024, "n_parallel": 1, "n_threads": 2}
    config = {
        "models_max": 1,
        "max_queue": 1,
        "models": [{**model, "model_alias": "first"}, {**model, "model_alias": "second"}],
    }
    path = tmp_path_factory.mktemp("config") / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    return start_server("--config_file", str(path), env={"LLAMACPP_API_KEY": KEY})


@pytest.fixture(scope="module")
def keyed(keyed_server: RunningServer) -> openai.OpenAI:
    """An OpenAI client with the right key."""
    return openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


PROTECTED = [
    ("GET", "/v1/models", None),
    ("GET", "/metrics", None),
    ("POST", "/tokenize", {"content": "hi"}),
    ("POST", "/detokenize", {"tokens": [1]}),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("POST", "/v1/embeddings", {"input": "hi"}),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {KEY}"], ids=["none", "wrong key", "not bearer"]
)
def test_protected_endpoints_refuse_without_the_key(
    keyed_server: RunningServer, method: str, path: str, body: object, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, keyed_server.url + path, json=body, headers=headers, timeout=60)
    error = assert_openai_error(response, 401, "invalid_api_key")
    assert error["type"] == "authentication_error"  # OpenAI's and llama-server's type for a bad key


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_protected_endpoints_answer_with_the_key(
    keyed_server: RunningServer, method: str, path: str, body: object
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx.request(method, keyed_server.url + path, json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_the_key_may_come_as_x_api_key(
    keyed_server: RunningServer, method: str, path: str, body: object
) -> None:
    url = keyed_server.url + path
    response = httpx.request(method, url, json=body, headers={"x-api-key": KEY}, timeout=60)
    assert response.status_code == 200, response.text
    wrong = httpx.request(method, url, json=body, headers={"x-api-key": "wrong"}, timeout=60)
    assert_openai_error(wrong, 401, "invalid_api_key")


def test_health_and_docs_need_no_key(keyed_server: RunningServer) -> None:
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200
    assert httpx.get(f"{keyed_server.url}/openapi.json").status_code == 200


def test_the_config_file_models_are_listed_by_alias(keyed: openai.OpenAI) -> None:
    assert [m.id for m in keyed.models.list().data] == ["first", "second"]


def test_an_unknown_model_is_404_not_the_default(keyed: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        keyed.completions.create(model="third", prompt="hi", max_tokens=1)


def test_models_load_on_use_and_at_most_models_max_stay_loaded(
    keyed: openai.OpenAI, keyed_server: RunningServer
) -> None:
    def loaded() -> dict[str, bool]:
        response = httpx.get(f"{keyed_server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        return {card["id"]: card["loaded"] for card in response.json()["data"]}

    for alias in ("second", "first"):
        result = keyed.completions.create(model=alias, prompt="hi", max_tokens=1)
        assert result.model == alias
        assert loaded() == {"first": alias == "first", "second": alias == "second"}


async def test_a_full_queue_is_503_with_retry_after(keyed_server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {
        "model": "first",
        "prompt": "Once upon a time",
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    async with (
        httpx.AsyncClient(base_url=keyed_server.url, headers=headers, timeout=120) as http,
        http.stream("POST", "/v1/completions", json=body) as running,
    ):
        running_lines = running.aiter_lines()
        await first_event(running_lines)  # generating in the only slot
        async with http.stream("POST", "/v1/completions", json=body) as waiting:
            assert waiting.status_code == 200  # admitted to the queue (max_queue 1)
            refused = await http.post("/v1/completions", json={**body, "stream": False})
            assert_openai_error(refused, 503, "server_overloaded")
            assert refused.headers["Retry-After"].isdigit()
