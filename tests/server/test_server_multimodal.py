"""Images in ``/v1/chat/completions``: a server started with ``--mmproj`` (the tiny test projector).

Only what the request carries is read by default (``data:`` URLs); ``file://``
URLs are read from ``--media-path`` alone, and ``http(s)`` URLs are refused.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_support import RunningServer, assert_openai_error

from mtmd_support import TOKENS_PER_IMAGE, noise_png, solid_png

QUESTION = "What is in this picture?"


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    (folder / "cat.png").write_bytes(noise_png(21))
    return folder


@pytest.fixture(scope="module")
def vision_server(
    start_server: Callable[..., RunningServer], model_path: Path, projector_path: Path, media_dir: Path
) -> RunningServer:
    """The default model with the tiny projector; file:// URLs from ``media_dir``."""
    flags = ["--n_ctx", "1024", "--n_parallel", "2", "--n_threads", "1", "--media-path", str(media_dir)]
    return start_server("--model", str(model_path), "--mmproj", str(projector_path), *flags)


@pytest.fixture(scope="module")
def vision_client(vision_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vision_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def vision_http(vision_server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=vision_server.url, timeout=120)


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def image_messages(url: str) -> list[dict[str, Any]]:
    content = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]
    return [{"role": "user", "content": content}]


def ask(http: httpx.Client, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 3, **extra})


def test_an_image_url_part_is_answered_and_its_tokens_are_counted(
    vision_client: openai.OpenAI, model_name: str
) -> None:
    text_only = vision_client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
        max_tokens=3,
    )
    with_image = vision_client.chat.completions.create(
        model=model_name,
        messages=image_messages(data_url(noise_png(20))),
        max_tokens=3,  # type: ignore[arg-type]
    )
    assert with_image.choices[0].message.content is not None
    assert text_only.usage is not None and with_image.usage is not None
    assert with_image.usage.prompt_tokens == text_only.usage.prompt_tokens + TOKENS_PER_IMAGE + 2


def test_the_same_image_again_comes_from_the_prefix_cache(vision_http: httpx.Client) -> None:
    messages = image_messages(data_url(solid_png((9, 99, 199))))
    ask(vision_http, messages)
    usage = ask(vision_http, messages).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


def test_a_streamed_reply_to_an_image_ends_with_usage(vision_http: httpx.Client) -> None:
    body = {"stream": True, "stream_options": {"include_usage": True}}
    response = ask(vision_http, image_messages(data_url(noise_png(22))), **body)
    assert response.status_code == 200
    assert '"prompt_tokens"' in response.text and response.text.rstrip().endswith("data: [DONE]")


def test_file_urls_are_read_from_the_media_path_only(vision_http: httpx.Client, tmp_path: Path) -> None:
    assert ask(vision_http, image_messages("file:///cat.png")).status_code == 200
    (tmp_path / "secret.png").write_bytes(noise_png(1))
    for url in (f"file://{tmp_path}/secret.png", "file:///../secret.png", "file:///missing.png"):
        assert_openai_error(ask(vision_http, image_messages(url)), 400)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("https://example.com/cat.png", "refused", id="remote-url"),
        pytest.param(data_url(b"not an image at all"), "could not decode", id="corrupt"),
        pytest.param(data_url(noise_png(1)[:60]), "could not decode", id="truncated"),
        pytest.param("data:image/png;base64,!!!", "base64", id="bad-base64"),
    ],
)
def test_bad_images_are_400_and_the_server_goes_on(vision_http: httpx.Client, url: str, reason: str) -> None:
    error = assert_openai_error(ask(vision_http, image_messages(url)), 400)
    assert reason in error["message"]
    assert ask(vision_http, image_messages(data_url(noise_png(23)))).status_code == 200


def test_audio_to_a_vision_only_projector_is_400(vision_http: httpx.Client) -> None:
    part = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(b"RIFF").decode(), "format": "wav"},
    }
    error = assert_openai_error(ask(vision_http, [{"role": "user", "content": [part]}]), 400)
    assert "audio" in error["message"]


def test_an_image_to_a_server_without_mmproj_says_to_load_one(http: httpx.Client) -> None:
    error = assert_openai_error(ask(http, image_messages(data_url(noise_png(1)))), 400)
    assert "mmproj" in error["message"]
