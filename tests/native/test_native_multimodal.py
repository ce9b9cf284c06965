"""Images in, on the real model, through a tiny random-weight projector (tests/mtmd_support.py).

The projector's output means nothing, but the path is real: llama.cpp loads it,
decodes and preprocesses each image, the engine encodes it and decodes the
embeddings into the request's sequence, then the model generates.  So an image
changes the logits, the same image twice is served from the prefix cache, and
every bad input is a typed error after which the model still works.
"""

from __future__ import annotations

import base64
import gc
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import pytest

from llamacpp_native import (
    ClosedError,
    ContextOverflowError,
    GenerationRequest,
    Llama,
    Llava15ChatHandler,
    MediaDecodeError,
    MediaMarkerError,
    MediaPolicy,
    MediaSourceError,
    MediaTooLargeError,
    Multimodal,
    MultimodalError,
    ProjectorLoadError,
    SamplingParams,
    TokenizeError,
)
from mtmd_support import (
    IMAGE_SIZE,
    TOKENS_PER_IMAGE,
    noise_png,
    noise_rgb,
    png_bytes,
    solid_png,
    tone,
    wav_bytes,
    write_test_audio_projector,
    write_test_projector,
)

QUESTION = "What is in this picture?"
IMAGE_WRAPPERS = 2
"""Gemma 3 wraps each image's embeddings in <start_of_image> ... <end_of_image>."""


@pytest.fixture(scope="module")
def vision(model_path: Path, projector_path: Path) -> Iterator[Llama]:
    """The default model with the tiny projector: 2 slots, one thread."""
    with Llama(model_path, mmproj_path=projector_path, n_ctx=1024, n_parallel=2, n_threads=1) as instance:
        yield instance


def data_url(image: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(image).decode()


def image_message(*images: str, text: str = QUESTION) -> list[dict[str, Any]]:
    """One user turn: the text, then each image (as a URL)."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return [{"role": "user", "content": parts}]


def chat(llama: Llama, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("max_tokens", 4)
    result = llama.create_chat_completion(messages, temperature=0.0, **kwargs)
    assert isinstance(result, dict)
    return result


def first_logprobs(llama: Llama, messages: list[dict[str, Any]]) -> dict[str, float]:
    """The top-10 log-probabilities of the first reply token."""
    result = chat(llama, messages, max_tokens=1, logprobs=True, top_logprobs=10)
    top = result["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return {item["token"]: item["logprob"] for item in top}


def assert_still_works(llama: Llama) -> None:
    """The model answers a plain text request, and a request with an image."""
    assert chat(llama, [{"role": "user", "content": "Say hi."}])["choices"][0]["finish_reason"]
    assert chat(llama, image_message(data_url(noise_png(99))))["usage"]["completion_tokens"] >= 1


# -- the projector ----------------------------------------------------------------------------------
def test_the_projector_loads_beside_the_model_and_says_what_it_takes(vision: Llama) -> None:
    projector = vision.multimodal
    assert projector is not None
    assert (projector.projector_type, projector.supports_vision, projector.supports_audio) == (
        "gemma3",
        True,
        False,
    )
    assert "gemma3" in repr(projector)


def test_llama_cpp_pythons_chat_handler_names_the_projector(model_path: Path, projector_path: Path) -> None:
    handler = Llava15ChatHandler(clip_model_path=str(projector_path))
    with Llama(model_path, chat_handler=handler, n_ctx=256, n_parallel=1, n_threads=1) as llama:
        assert llama.multimodal is not None
        assert llama.multimodal.path == projector_path
        assert chat(llama, image_message(data_url(noise_png(1))))["usage"]["prompt_tokens"] > TOKENS_PER_IMAGE


def test_closing_frees_everything_once_and_later_use_is_a_closed_error(
    model_path: Path, projector_path: Path
) -> None:
    llama = Llama(model_path, mmproj_path=projector_path, n_ctx=256, n_parallel=1, n_threads=1)
    projector = llama.multimodal
    assert projector is not None
    bitmap = projector.media(noise_png(1))
    prompt = projector.tokenize(f"look {projector.marker} now", [bitmap])
    bitmap.close()
    bitmap.close()
    llama.close()
    llama.close()
    assert projector.closed
    with pytest.raises(ClosedError):
        projector.media(noise_png(1))
    del prompt  # its media chunks are freed after their projector: they do not need it
    gc.collect()


# -- images change what the model sees --------------------------------------------------------------
def test_media_tokens_count_in_usage(vision: Llama) -> None:
    text_only = chat(vision, [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}])
    one = chat(vision, image_message(data_url(noise_png(1))))
    two = chat(vision, image_message(data_url(noise_png(1)), data_url(noise_png(2))))
    per_image = TOKENS_PER_IMAGE + IMAGE_WRAPPERS
    assert one["usage"]["prompt_tokens"] == text_only["usage"]["prompt_tokens"] + per_image
    assert two["usage"]["prompt_tokens"] == text_only["usage"]["prompt_tokens"] + 2 * per_image
    rendered = vision.render_chat(image_message(data_url(noise_png(1))))
    assert len(vision.chat_prompt_tokens(rendered)) == one["usage"]["prompt_tokens"]


def test_different_images_give_different_logits_and_the_same_image_the_same(vision: Llama) -> None:
    first = first_logprobs(vision, image_message(data_url(noise_png(1))))
    other = first_logprobs(vision, image_message(data_url(solid_png((255, 0, 0)))))
    again = first_logprobs(vision, image_message(data_url(noise_png(1))))
    assert first.keys() == again.keys()
    assert all(abs(first[token] - again[token]) < 1e-3 for token in first)
    assert first.keys() != other.keys() or any(abs(first[t] - other[t]) > 0.05 for t in first)


def test_the_same_image_twice_is_served_from_the_prefix_cache(vision: Llama) -> None:
    messages = image_message(data_url(noise_png(3)), text="Look closely.")
    decoded = vision.engine.stats()["media_decoded"]
    cold = chat(vision, messages)
    warm = chat(vision, messages)
    assert vision.engine.stats()["media_decoded"] == decoded + 1  # encoded and decoded once
    # everything but the last prompt token, which is decoded again for fresh logits
    assert warm["usage"]["prompt_tokens_details"]["cached_tokens"] == warm["usage"]["prompt_tokens"] - 1
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] < warm["usage"]["prompt_tokens"] - 1


def test_a_different_image_with_the_same_text_is_a_cache_miss_from_the_image_on(vision: Llama) -> None:
    text = "Which colour is this?"
    chat(vision, image_message(data_url(solid_png((0, 0, 255))), text=text))
    decoded = vision.engine.stats()["media_decoded"]
    other = chat(vision, image_message(data_url(solid_png((0, 255, 0))), text=text))
    assert vision.engine.stats()["media_decoded"] == decoded + 1
    rendered = vision.render_chat(image_message(data_url(solid_png((0, 255, 0))), text=text))
    tokens = vision.chat_prompt_tokens(rendered)
    image_start = next(i for i, token in enumerate(tokens) if token < 0)
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] <= image_start


def test_the_same_file_as_a_path_a_file_url_and_a_data_url_is_one_cache_entry(
    vision: Llama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = noise_png(4)
    path = tmp_path / "picture.png"
    path.write_bytes(image)
    first = chat(vision, image_message(str(path)))
    decoded = vision.engine.stats()["media_decoded"]
    monkeypatch.chdir(tmp_path)
    for url in (path.as_uri(), data_url(image), "picture.png"):
        again = chat(vision, image_message(url))
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == first["usage"]["prompt_tokens"] - 1
    assert vision.engine.stats()["media_decoded"] == decoded


def test_raw_rgb_pixels_go_through_the_engine_directly(vision: Llama) -> None:
    projector = vision.multimodal
    assert projector is not None
    with projector.rgb(IMAGE_SIZE, IMAGE_SIZE, noise_rgb(IMAGE_SIZE, IMAGE_SIZE, 5)) as bitmap:
        assert (bitmap.width, bitmap.height, bitmap.is_audio, len(bitmap.id)) == (16, 16, False, 64)
        prompt = projector.tokenize(f"<start_of_turn>user\n{projector.marker}<end_of_turn>\n", [bitmap])
    prompt = prompt.with_prefix([vision.token_bos()])
    assert prompt.n_media_tokens == TOKENS_PER_IMAGE
    ((start, chunk),) = prompt.media
    assert prompt.tokens[start : start + chunk.n_tokens] == list(chunk.placeholders)
    request = GenerationRequest(
        prompt.tokens, SamplingParams(temperature=0.0), max_tokens=3, media=prompt.media
    )
    result = vision.engine.generate(request)
    assert result.completion_tokens == 3
    assert result.prompt_tokens == len(prompt.tokens)


def test_streamed_and_async_chats_take_images(vision: Llama) -> None:
    chunks = list(
        vision.create_chat_completion(image_message(data_url(noise_png(6))), max_tokens=3, stream=True)
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["prompt_tokens"] > TOKENS_PER_IMAGE


async def test_async_chat_takes_images(vision: Llama) -> None:
    result = await vision.acreate_chat_completion(image_message(data_url(noise_png(7))), max_tokens=3)
    assert isinstance(result, dict)
    assert result["usage"]["completion_tokens"] == 3


def test_concurrent_image_requests_all_finish_in_the_shared_batch(vision: Llama) -> None:
    results: dict[int, Any] = {}

    def run(seed: int) -> None:
        try:
            results[seed] = chat(vision, image_message(data_url(noise_png(100 + seed))), max_tokens=6)
        except BaseException as error:  # the assertion below shows it
            results[seed] = error

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(isinstance(r, dict) and r["usage"]["completion_tokens"] == 6 for r in results.values())
    assert len(results) == 4


def test_a_preempted_image_request_is_decoded_again_and_finishes(
    model_path: Path, projector_path: Path
) -> None:
    with Llama(model_path, mmproj_path=projector_path, n_ctx=128, n_parallel=2, n_threads=1) as small:
        end_of_turn = small.tokenize("<end_of_turn>", add_bos=False, special=True)[0]
        no_end = {small.token_eos(): -100.0, end_of_turn: -100.0}
        renders = [
            small.render_chat(image_message(*(data_url(noise_png(10 * seed + i)) for i in range(5))))
            for seed in (1, 2)
        ]
        prompt_length = len(small.chat_prompt_tokens(renders[0]))
        length = (small.n_ctx - 2 * prompt_length) // 2 + 4  # the two cannot both fit
        requests = [
            small.chat_request(rendered, max_tokens=length, temperature=0.0, logit_bias=no_end)
            for rendered in renders
        ]
        results = small.engine.generate_many(requests)
        assert [r.completion_tokens for r in results] == [length, length]
        assert small.engine.stats()["media_decoded"] >= 15  # 10 images, and 5 decoded again after preemption


def test_a_cancelled_image_request_frees_its_slot(vision: Llama) -> None:
    stream = vision.create_chat_completion(image_message(data_url(noise_png(8))), max_tokens=50, stream=True)
    assert isinstance(stream, Iterator)
    next(stream)
    next(stream)
    stream.close()
    assert vision.engine.wait_idle(timeout=60)
    assert_still_works(vision)


# -- audio: the same path, through a tiny Ultravox (Whisper encoder) projector ----------------------
@pytest.fixture(scope="module")
def listening(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Llama]:
    """The default model with a tiny random audio projector."""
    projector = write_test_audio_projector(tmp_path_factory.mktemp("audio") / "mmproj-audio.gguf")
    with Llama(model_path, mmproj_path=projector, n_ctx=2048, n_parallel=1, n_threads=1) as instance:
        yield instance


def audio_message(wav: bytes, text: str = "What do you hear?") -> list[dict[str, Any]]:
    audio = {"data": base64.b64encode(wav).decode(), "format": "wav"}
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": text}, {"type": "input_audio", "input_audio": audio}],
        }
    ]


def test_input_audio_parts_are_heard_and_counted(listening: Llama) -> None:
    projector = listening.multimodal
    assert projector is not None
    assert (projector.supports_audio, projector.supports_vision, projector.audio_sample_rate) == (
        True,
        False,
        16000,
    )
    text_only = chat(
        listening, [{"role": "user", "content": [{"type": "text", "text": "What do you hear?"}]}]
    )
    heard = chat(listening, audio_message(wav_bytes(tone(440.0))))
    # one 30-second chunk (the clip is padded to it): 375 embeddings
    assert heard["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"] >= 375


def test_different_sounds_give_different_logits_and_the_same_sound_is_cached(listening: Llama) -> None:
    low = first_logprobs(listening, audio_message(wav_bytes(tone(220.0))))
    high = first_logprobs(listening, audio_message(wav_bytes(tone(3000.0))))
    assert low.keys() != high.keys() or any(abs(low[t] - high[t]) > 0.05 for t in low)
    again = chat(listening, audio_message(wav_bytes(tone(3000.0))))
    usage = again["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


def test_raw_pcm_samples_make_an_audio_clip(listening: Llama) -> None:
    projector = listening.multimodal
    assert projector is not None
    with projector.audio(tone(880.0)) as clip:
        assert (clip.is_audio, clip.width) == (True, 16000)
        prompt = projector.tokenize(f"Listen: {projector.marker} Now answer.", [clip])
    ((_start, chunk),) = prompt.media
    assert (chunk.kind, chunk.n_tokens) == ("audio", 375)
    with pytest.raises(MediaDecodeError):
        projector.audio([])


def test_an_image_to_an_audio_only_projector_is_refused(listening: Llama) -> None:
    with pytest.raises(MultimodalError, match="no vision encoder"):
        chat(listening, image_message(data_url(noise_png(1))))
    assert chat(listening, audio_message(wav_bytes(tone(440.0))))["usage"]["completion_tokens"] >= 1


# -- bad input: a typed error, and the model still works ----------------------------------------------
def _half_png() -> bytes:
    image = noise_png(1)
    return image[: len(image) // 2]


def _zero_size_png() -> bytes:
    return png_bytes(0, 0, b"")


def _huge_png() -> bytes:
    """A PNG header announcing 100k x 100k pixels (30 GB of RGB): refused before decoding."""
    header = png_bytes(1, 1, b"\x00\x00\x00")
    return header[:16] + struct.pack(">II", 100_000, 100_000) + header[24:]


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"this is not an image", id="not-an-image"),
        pytest.param(_half_png(), id="truncated-png"),
        pytest.param(b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00" + bytes(24), id="webp-unsupported"),
        pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", id="svg-unsupported"),
        pytest.param(_zero_size_png(), id="zero-size"),
    ],
)
def test_undecodable_image_bytes_are_a_media_decode_error(vision: Llama, payload: bytes) -> None:
    with pytest.raises(MediaDecodeError):
        chat(vision, image_message(data_url(payload)))
    assert_still_works(vision)


def test_an_image_of_too_many_pixels_is_refused_before_it_is_decoded(vision: Llama) -> None:
    with pytest.raises(MediaDecodeError, match="max_image_pixels"):
        chat(vision, image_message(data_url(_huge_png())))
    assert_still_works(vision)


def test_an_empty_or_non_base64_data_url_is_a_media_decode_error(vision: Llama) -> None:
    for url in ("data:image/png;base64,", "data:image/png;base64,@@@not base64@@@"):
        with pytest.raises(MediaDecodeError):
            chat(vision, image_message(url))
    projector = vision.multimodal
    assert projector is not None
    with pytest.raises(MediaDecodeError):
        projector.rgb(0, 0, b"")
    with pytest.raises(MediaDecodeError):
        projector.rgb(4, 4, b"\x00" * 10)


def test_an_image_to_a_model_without_a_projector_says_to_load_one(llama: Llama) -> None:
    with pytest.raises(MultimodalError, match="mmproj_path"):
        llama.create_chat_completion(image_message(data_url(noise_png(1))), max_tokens=2)
    assert llama.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2)


def test_audio_to_a_projector_without_an_audio_encoder_is_refused(vision: Llama) -> None:
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28)
    audio_part = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"},
    }
    with pytest.raises(MultimodalError, match="no audio encoder"):
        chat(vision, [{"role": "user", "content": [{"type": "text", "text": "Listen"}, audio_part]}])
    with pytest.raises(MultimodalError, match="no audio encoder"):
        chat(vision, image_message(data_url(wav, "audio/wav")))
    assert_still_works(vision)


def test_remote_urls_are_refused_by_default_and_local_files_follow_the_policy(
    model_path: Path, projector_path: Path, tmp_path: Path
) -> None:
    image = tmp_path / "inside" / "cat.png"
    image.parent.mkdir()
    image.write_bytes(noise_png(2))
    (tmp_path / "outside.png").write_bytes(noise_png(2))
    served = MediaPolicy(allow_files=True, file_root=image.parent)
    with Llama(model_path, mmproj_path=projector_path, n_ctx=256, n_parallel=1, n_threads=1) as local:
        with pytest.raises(MediaSourceError, match="refused"):
            chat(local, image_message("https://example.com/cat.png"))
        with pytest.raises(MediaSourceError, match="no such"):
            chat(local, image_message(str(tmp_path / "missing.png")))
        with pytest.raises(MediaSourceError, match="scheme"):
            chat(local, image_message("ftp://example.com/cat.png"))
        local.media_policy = MediaPolicy(allow_files=False)
        with pytest.raises(MediaSourceError, match="not allowed"):
            chat(local, image_message(str(image)))
        local.media_policy = served
        assert chat(local, image_message("file:///cat.png"))["usage"]["completion_tokens"] >= 1
        with pytest.raises(MediaSourceError, match="outside"):
            chat(local, image_message("file:///../outside.png"))
        local.media_policy = MediaPolicy(max_bytes=100)
        with pytest.raises(MediaSourceError, match="limit"):
            chat(local, image_message(data_url(noise_png(2))))


def test_more_markers_than_images_or_more_images_than_markers_is_a_marker_error(vision: Llama) -> None:
    projector = vision.multimodal
    assert projector is not None
    with projector.media(noise_png(1)) as bitmap:
        with pytest.raises(MediaMarkerError):
            projector.tokenize(f"{projector.marker} and {projector.marker}", [bitmap])
        with pytest.raises(MediaMarkerError):
            projector.tokenize("no marker at all", [bitmap])
        with pytest.raises(MediaMarkerError):
            projector.tokenize(f"a marker {projector.marker} but no image", [])
        # llama.cpp's default marker is plain text here: a user cannot inject an image with it
        assert projector.tokenize("<__media__>", []).media == ()
    assert_still_works(vision)


def test_an_image_larger_than_n_ubatch_or_the_context_is_a_media_too_large_error(
    model_path: Path, projector_path: Path
) -> None:
    with Llama(
        model_path, mmproj_path=projector_path, n_ctx=512, n_ubatch=8, n_parallel=1, n_threads=1
    ) as llama:
        with pytest.raises(MediaTooLargeError, match="n_ubatch"):
            chat(llama, image_message(data_url(noise_png(1))))
        assert chat(llama, [{"role": "user", "content": "Hi"}])["usage"]["completion_tokens"] >= 1
    with Llama(model_path, mmproj_path=projector_path, n_ctx=64, n_parallel=1, n_threads=1) as llama:
        count = llama.n_ctx // (TOKENS_PER_IMAGE + IMAGE_WRAPPERS) + 1  # n_ctx is rounded up to 256
        many = image_message(*(data_url(noise_png(seed)) for seed in range(count)))
        with pytest.raises(MediaTooLargeError, match="context window") as caught:
            chat(llama, many)
        assert isinstance(caught.value, ContextOverflowError)
        assert chat(llama, image_message(data_url(noise_png(1))), max_tokens=2)


def test_a_prompt_must_end_with_text_and_placeholders_never_reach_the_batch(vision: Llama) -> None:
    projector = vision.multimodal
    assert projector is not None
    with projector.media(noise_png(1)) as bitmap:
        prompt = projector.tokenize(f"ends with {projector.marker}", [bitmap]).with_prefix(
            [vision.token_bos()]
        )
    ((start, chunk),) = prompt.media
    ends_with_image = prompt.tokens[: start + chunk.n_tokens]  # Gemma 3 adds <end_of_image>: cut it
    with pytest.raises(MultimodalError, match="end with text"):
        vision.engine.submit(GenerationRequest(ends_with_image, media=prompt.media))
    with pytest.raises(TokenizeError):  # the placeholders without their media: refused, never decoded
        vision.engine.submit(GenerationRequest(prompt.tokens))
    moved = list(prompt.tokens)
    moved[start] = 1
    with pytest.raises(ValueError, match="does not stand"):
        vision.engine.submit(GenerationRequest(moved, media=prompt.media))
    assert vision.engine.idle


# -- bad projector files: a ProjectorLoadError naming the reason, never an abort -----------------------
def _not_gguf(path: Path, _projector: Path, _model: Path) -> None:
    path.write_bytes(noise_png(1))


def _the_model_itself(path: Path, _projector: Path, model: Path) -> None:
    shutil.copyfile(model, path)


def _wrong_key_type(path: Path, _projector: Path, _model: Path) -> None:
    write_test_projector(path, overrides={"clip.vision.image_size": "sixteen"})


def _float_for_int(path: Path, _projector: Path, _model: Path) -> None:
    write_test_projector(path, overrides={"clip.vision.patch_size": (4.0, gguf.GGUFValueType.FLOAT32)})


def _missing_key(path: Path, _projector: Path, _model: Path) -> None:
    write_test_projector(path, drop_keys=["clip.vision.block_count"])


def _missing_tensor(path: Path, _projector: Path, _model: Path) -> None:
    write_test_projector(path, drop_tensors=["v.blk.0.attn_out.weight"])


def _unknown_projector_type(path: Path, _projector: Path, _model: Path) -> None:
    write_test_projector(path, overrides={"clip.projector_type": "nonsense"})


def _truncated(path: Path, projector: Path, _model: Path) -> None:
    data = projector.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


def _header_only(path: Path, projector: Path, _model: Path) -> None:
    path.write_bytes(projector.read_bytes()[:100])


def _other_width(path: Path, _projector: Path, _model: Path) -> None:
    write_test_projector(path, n_embd_out=320)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(None, "not found", id="missing"),
        pytest.param(_not_gguf, "not a projector", id="not-gguf"),
        pytest.param(_the_model_itself, "no vision or audio encoder", id="the-text-model"),
        pytest.param(
            _wrong_key_type, "clip.vision.image_size must be UINT32, not STRING", id="wrong-key-type"
        ),
        pytest.param(_float_for_int, "clip.vision.patch_size must be UINT32", id="float-for-int"),
        pytest.param(_missing_key, "block_count", id="missing-key"),
        pytest.param(_missing_tensor, "attn_out", id="missing-tensor"),
        pytest.param(_unknown_projector_type, "unknown projector type", id="unknown-type"),
        pytest.param(_truncated, "truncated", id="truncated"),
        pytest.param(_header_only, "truncated", id="header-only"),
        pytest.param(_other_width, "width 320", id="another-models-width"),
    ],
)
def test_a_bad_projector_file_is_a_projector_load_error_and_the_model_stays_usable(
    vision: Llama, projector_path: Path, model_path: Path, tmp_path: Path, make: Any, reason: str
) -> None:
    path = tmp_path / "mmproj.gguf"
    if make is not None:
        make(path, projector_path, model_path)
    with pytest.raises(ProjectorLoadError, match=reason):
        Multimodal(vision.model, path)
    with pytest.raises(ProjectorLoadError):
        Llama(model_path, mmproj_path=path, n_ctx=128, n_parallel=1, n_threads=1)
    assert_still_works(vision)
