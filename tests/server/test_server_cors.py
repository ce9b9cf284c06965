"""CORS: off unless ``--cors_origins`` names the web origins (or ``*``) allowed to call the server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from server_support import RunningServer, assert_openai_error

from llamacpp_integrations.server import ServerSettings, create_app

KEY = "sesame"
APP = "https://app.example"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


@pytest.fixture(scope="module")
def cors_server(start_server: Callable[..., RunningServer], model_path: Path) -> RunningServer:
    """Two allowed origins (one given with a trailing slash) and an API key."""
    return start_server(
        "--model",
        str(model_path),
        "--n_threads",
        "2",
        "--cors_origins",
        f"{APP}/, http://localhost:5173",
        env={"LLAMACPP_API_KEY": KEY},
    )


def test_a_preflight_from_an_allowed_origin_is_answered_without_the_key(cors_server: RunningServer) -> None:
    response = httpx.options(
        f"{cors_server.url}/v1/chat/completions", headers={"Origin": APP, **PREFLIGHT}, timeout=60
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "authorization,content-type"


def test_a_preflight_from_another_origin_is_400_without_allow_origin(cors_server: RunningServer) -> None:
    headers = {"Origin": "https://evil.example", **PREFLIGHT}
    response = httpx.options(f"{cors_server.url}/completion", headers=headers, timeout=60)
    assert_openai_error(response, 400, "cors_not_allowed")
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("origin", [APP, "http://localhost:5173"])
def test_answers_to_an_allowed_origin_carry_cors_headers(cors_server: RunningServer, origin: str) -> None:
    authorized = {"Origin": origin, "Authorization": f"Bearer {KEY}"}
    body = {"prompt": "Hi", "n_predict": 1}
    response = httpx.post(f"{cors_server.url}/completion", json=body, headers=authorized, timeout=60)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    # errors too, so that the page can read them: a missing key, a bad body
    refused = httpx.get(f"{cors_server.url}/v1/models", headers={"Origin": origin}, timeout=60)
    assert_openai_error(refused, 401, "invalid_api_key")
    assert refused.headers["access-control-allow-origin"] == origin
    invalid = httpx.post(f"{cors_server.url}/completion", json={}, headers=authorized, timeout=60)
    assert_openai_error(invalid, 400)
    assert invalid.headers["access-control-allow-origin"] == origin


def test_another_origin_gets_no_cors_headers(cors_server: RunningServer) -> None:
    headers = {"Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"}
    response = httpx.get(f"{cors_server.url}/v1/models", headers=headers, timeout=60)
    assert response.status_code == 200  # the server answers; the browser withholds it from the page
    assert "access-control-allow-origin" not in response.headers


def test_without_cors_origins_there_are_no_cors_headers(http: httpx.Client) -> None:
    assert "access-control-allow-origin" not in http.get("/health", headers={"Origin": APP}).headers
    preflight = http.options("/v1/chat/completions", headers={"Origin": APP, **PREFLIGHT})
    assert_openai_error(preflight, 405)
    assert "access-control-allow-origin" not in preflight.headers


def test_a_star_allows_every_origin(model_path: Path) -> None:
    app = create_app(ServerSettings(model=str(model_path), cors_origins="*"))
    client = TestClient(app)  # outside ``with``: no model loads; CORS answers before any route
    preflight = client.options("/v1/embeddings", headers={"Origin": "https://any.example", **PREFLIGHT})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    loading = client.get("/health", headers={"Origin": "https://any.example"})
    assert loading.status_code == 503 and loading.json()["error"]["code"] == "model_loading"
    assert loading.headers["access-control-allow-origin"] == "*"


LOCAL = [
    "http://localhost",
    "http://localhost:8080",
    "http://127.0.0.1:3000",
    "http://[::1]",
    "https://[::1]:3000",
]
NOT_LOCAL = [
    "http://evil.example",
    "http://notlocalhost",
    "http://localhost.evil.example",
    "http://127.0.0.2",
]


@pytest.mark.parametrize("origin", LOCAL + NOT_LOCAL)
def test_the_localhost_keyword_allows_pages_of_this_machine_only(model_path: Path, origin: str) -> None:
    app = create_app(ServerSettings(model=str(model_path), cors_origins="localhost, https://app.example"))
    client = TestClient(app)  # outside ``with``: no model loads; CORS answers before any route
    preflight = client.options("/completion", headers={"Origin": origin, **PREFLIGHT})
    if origin in LOCAL:
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin  # reflected, never *
    else:
        assert_openai_error(preflight, 400, "cors_not_allowed")
        assert "access-control-allow-origin" not in preflight.headers
    listed = client.options("/completion", headers={"Origin": APP, **PREFLIGHT})
    assert listed.headers["access-control-allow-origin"] == APP  # listed origins still work beside it


@pytest.mark.parametrize("origins", ["app.example", "https://a.example,ftp://b.example"])
def test_an_origin_without_a_scheme_is_refused_at_start(model_path: Path, origins: str) -> None:
    with pytest.raises(ValidationError, match="CORS origin"):
        ServerSettings(model=str(model_path), cors_origins=origins)
