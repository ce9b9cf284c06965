"""Images and audio in: a multimodal projector (mmproj GGUF) beside a ``Model``, through llama.cpp's libmtmd.

``Multimodal`` loads the projector; ``Bitmap`` holds one decoded image or audio
clip; ``Multimodal.tokenize`` turns a prompt with media markers into a
``MultimodalPrompt``: text tokens, and a ``MediaChunk`` per image or clip.  The
generation engine evaluates a chunk (encode, then decode the embeddings into the
sequence) as part of the request's prefill.

In a prompt's token list a media chunk stands as placeholder ids derived from
its content (negative, so never a real token): the prefix cache sees the same
image twice as the same tokens, and a different image as different ones.

The projector file is checked in Python before llama.cpp reads it
(``projector_file``): llama.cpp's GGUF getters abort the process on a key of
the wrong type.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from llamacpp_native.binding._library import CallLog, ensure_backend, ffi, lib
from llamacpp_native.binding.context import Context, default_threads
from llamacpp_native.binding.gate import Gate
from llamacpp_native.binding.model import Model
from llamacpp_native.chat.projector_file import check_projector_file
from llamacpp_native.errors import (
    ClosedError,
    MediaDecodeError,
    MediaMarkerError,
    MultimodalError,
    ProjectorLoadError,
)

MAX_IMAGE_PIXELS = 64 * 1024 * 1024
"""Largest image decoded by default: 64 megapixels (192 MiB of RGB)."""


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG, GIF, BMP or JPEG header without decoding it; None for other data."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return int(width), int(height)
        if data[:2] == b"BM":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(int(width)), abs(int(height))
        if data[:2] == b"\xff\xd8":
            i = 2
            while i + 9 <= len(data):
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                    height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                    return int(width), int(height)
                if marker in (0xD8, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7:
                    i += 2 if marker != 0xFF else 1
                    continue
                i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    except struct.error:
        return None  # a truncated header: the decoder reports it
    return None


_MEDIA_KIND = {lib.MTMD_INPUT_CHUNK_TYPE_IMAGE: "image", lib.MTMD_INPUT_CHUNK_TYPE_AUDIO: "audio"}
_PLACEHOLDER_BASE = 1 << 40  # far outside int32: a placeholder that reached llama_batch would raise


class Bitmap:
    """One decoded image (RGB pixels) or audio clip (PCM samples), owned exactly once.

    Made by ``Multimodal.image`` / ``image_file`` / ``rgb`` / ``audio``.  ``id`` is a
    hash of the content; the prefix cache keys on it.
    """

    def __init__(self, raw: Any) -> None:
        self._handle: Any = ffi.gc(raw, lib.mtmd_bitmap_free)

    @property
    def handle(self) -> Any:
        """The raw ``mtmd_bitmap *`` (raises ``ClosedError`` after close)."""
        if self._handle is None:
            raise ClosedError("bitmap is closed")
        return self._handle

    @property
    def is_audio(self) -> bool:
        """Whether it is an audio clip (else an image)."""
        return bool(lib.mtmd_bitmap_is_audio(self.handle))

    @property
    def width(self) -> int:
        """Image width in pixels (audio: the number of samples)."""
        return int(lib.mtmd_bitmap_get_nx(self.handle))

    @property
    def height(self) -> int:
        """Image height in pixels (audio: 1)."""
        return int(lib.mtmd_bitmap_get_ny(self.handle))

    @property
    def id(self) -> str:
        """The content hash (sha-256, hex) that identifies it in the prefix cache."""
        raw = lib.mtmd_bitmap_get_id(self.handle)
        return "" if raw == ffi.NULL else ffi.string(raw).decode()

    def close(self) -> None:
        """Free the pixels or samples.  Safe to call twice."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            ffi.release(handle)

    def __enter__(self) -> Bitmap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._handle is None:
            return "<Bitmap: closed>"
        return (
            f"<Bitmap audio, {self.width} samples>"
            if self.is_audio
            else f"<Bitmap {self.width}x{self.height}>"
        )


class MediaChunk:
    """An image or audio clip of a tokenized prompt: preprocessed, not yet encoded.

    It owns its copy of the ``mtmd_input_chunk`` (freed exactly once) and keeps
    its ``Multimodal`` alive.  ``placeholders`` are the ids it takes in a prompt's
    token list: one per embedding, derived from the content, the projector and
    which occurrence of that content in the prompt it is.
    """

    def __init__(self, multimodal: Multimodal, chunk: Any, occurrence: int) -> None:
        copy = lib.mtmd_input_chunk_copy(chunk)
        if copy == ffi.NULL:
            raise MemoryError("could not copy a media chunk")
        self._handle: Any = ffi.gc(copy, lib.mtmd_input_chunk_free)
        self.multimodal = multimodal
        self.kind: str = _MEDIA_KIND[lib.mtmd_input_chunk_get_type(copy)]
        self.n_tokens: int = int(lib.mtmd_input_chunk_get_n_tokens(copy))
        """Embeddings it decodes to: the KV cells (and prompt tokens) it takes."""
        self.n_pos: int = int(lib.mtmd_input_chunk_get_n_pos(copy))
        """Positions it advances the sequence by (fewer than ``n_tokens`` under M-RoPE)."""
        raw_id = lib.mtmd_input_chunk_get_id(copy)
        self.id: str = "" if raw_id == ffi.NULL else ffi.string(raw_id).decode()
        content = self.id or secrets.token_hex(16)  # no id: never the same as anything else
        identity = f"{multimodal.key}\0{content}\0{occurrence}\0{self.n_tokens}"
        base = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "little")
        self.placeholders: tuple[int, ...] = tuple(
            -(_PLACEHOLDER_BASE + (base + k) % _PLACEHOLDER_BASE) for k in range(self.n_tokens)
        )

    @property
    def handle(self) -> Any:
        """The raw ``mtmd_input_chunk *``."""
        return self._handle

    @property
    def non_causal(self) -> bool:
        """Whether its embeddings are decoded with full (non-causal) attention: in one micro-batch."""
        with self.multimodal.gate:
            return bool(lib.mtmd_decode_use_non_causal(self.multimodal.handle, self._handle))

    def __repr__(self) -> str:
        return f"<MediaChunk {self.kind}, {self.n_tokens} tokens, id {self.id[:12]}>"


PromptMedia = tuple[tuple[int, MediaChunk], ...]
"""Media chunks of a prompt, each with the index of its first placeholder in the token list."""


@dataclass(frozen=True)
class MultimodalPrompt:
    """A tokenized prompt with media: text token runs and media chunks, in order."""

    pieces: tuple[tuple[int, ...] | MediaChunk, ...]

    @cached_property
    def tokens(self) -> list[int]:
        """Every token of the prompt, a media chunk's placeholders in its place."""
        out: list[int] = []
        for piece in self.pieces:
            out.extend(piece.placeholders if isinstance(piece, MediaChunk) else piece)
        return out

    @cached_property
    def media(self) -> PromptMedia:
        """The media chunks with their start in ``tokens``."""
        found: list[tuple[int, MediaChunk]] = []
        start = 0
        for piece in self.pieces:
            if isinstance(piece, MediaChunk):
                found.append((start, piece))
                start += piece.n_tokens
            else:
                start += len(piece)
        return tuple(found)

    @property
    def n_media_tokens(self) -> int:
        """Tokens the media take (embeddings decoded into the context)."""
        return sum(chunk.n_tokens for _start, chunk in self.media)

    def with_prefix(self, tokens: Sequence[int]) -> MultimodalPrompt:
        """The same prompt after ``tokens`` (a BOS the template left out)."""
        return MultimodalPrompt((tuple(tokens), *self.pieces)) if tokens else self


class Multimodal:
    """A multimodal projector (mmproj GGUF) beside a ``Model``: images, and audio where it has an encoder.

    The file is validated first (a typed ``ProjectorLoadError`` names what is
    wrong, including a projector made for another model).  Owns its
    ``mtmd_context`` and frees it exactly once (``close()``, ``with``, or garbage
    collection); keeps the model alive, and is unusable once the model is closed.
    Encoding is serialised per projector; tokenizing may run on any thread.  Each
    call runs inside ``gate``: ``close()`` (or closing the model) refuses new
    calls with ``ClosedError`` and waits for those in flight before freeing.

    ``marker`` is the text that stands for a medium in a prompt given to
    ``tokenize``.  It is random per instance unless given, so text that merely
    contains llama.cpp's default ``<__media__>`` cannot inject a medium.
    """

    def __init__(
        self,
        model: Model,
        path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        use_gpu: bool | None = None,
        warmup: bool = False,
        marker: str | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.model = model
        self.path = Path(path)
        self.projector_type = check_projector_file(self.path, model)
        ensure_backend()
        self.marker = marker or f"<__media_{secrets.token_hex(8)}__>"
        params = lib.mtmd_context_params_default()
        params.use_gpu = lib.llama_supports_gpu_offload() if use_gpu is None else use_gpu
        params.print_timings = False
        params.n_threads = n_threads or default_threads()
        params.warmup = warmup
        marker_c = ffi.new("char[]", self.marker.encode())
        params.media_marker = marker_c
        self.gate = Gate(f"projector {self.path.name}")
        """Every native call on the projector runs inside it (``with multimodal.gate:``)."""
        self._close_lock = threading.Lock()
        with model.gate:  # registered before the model can start closing, so its close() closes this
            self._n_embd_inp = int(lib.llama_model_n_embd_inp(model.handle))
            with CallLog() as log:
                raw = lib.mtmd_init_from_file(os.fsencode(self.path), model.handle, params)
            if raw == ffi.NULL:
                raise ProjectorLoadError(f"failed to load projector {self.path}: {log.reason()}")
            self._handle: Any = ffi.gc(raw, lib.mtmd_free)
            model._register_dependent(self)
        self._lock = threading.RLock()
        stat = self.path.stat()
        self.key = f"{os.path.realpath(self.path)}:{stat.st_size}:{stat.st_mtime_ns}"
        """Identifies this projector's output in placeholder ids (same file: same embeddings)."""
        self.supports_vision: bool = bool(lib.mtmd_support_vision(raw))
        self.supports_audio: bool = bool(lib.mtmd_support_audio(raw))
        self.audio_sample_rate: int | None = (
            int(lib.mtmd_get_audio_sample_rate(raw)) if self.supports_audio else None
        )
        """Sample rate (Hz) of the PCM that ``audio()`` takes, or None without an audio encoder."""
        self.uses_mrope: bool = bool(lib.mtmd_decode_use_mrope(raw))
        self.max_image_pixels = max_image_pixels
        """More pixels are refused before decoding (a small file may hold a huge image)."""

    # -- lifetime -------------------------------------------------------------------------
    @property
    def handle(self) -> Any:
        """The raw ``mtmd_context *`` (``ClosedError`` once it or its model closes); use inside ``gate``."""
        if self._handle is None or self.gate.closing:
            raise ClosedError(f"projector {self.path.name} is closed")
        if self.model.closed:
            raise ClosedError(f"projector {self.path.name}: its model is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._handle is None

    def close(self) -> None:
        """Free the projector once the calls in flight have left.  Safe to call twice.

        From inside a call on the projector it raises ``CloseInsideCallError`` and changes nothing.
        """
        if self._handle is None:
            return
        self.gate.check_close()
        with self._close_lock:
            self.gate.close()
            if self._handle is not None:
                handle, self._handle = self._handle, None
                ffi.release(handle)

    def __enter__(self) -> Multimodal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<Multimodal {self.path.name}: closed>"
        kinds = [k for k, on in (("vision", self.supports_vision), ("audio", self.supports_audio)) if on]
        return f"<Multimodal {self.path.name}: {self.projector_type}, {'+'.join(kinds)}>"

    def _lacks(self, kind: str) -> MultimodalError:
        other = "images" if kind == "audio" else "audio"
        return MultimodalError(f"projector {self.path.name} has no {kind} encoder: it takes {other} only")

    # -- media ------------------------------------------------------------------------------
    def media(self, data: bytes) -> Bitmap:
        """Decode an image file (PNG, JPEG, BMP, GIF...) or, with an audio encoder, audio (WAV, MP3, FLAC).

        Raises ``MediaDecodeError`` for empty, corrupt, truncated or unsupported
        bytes, and ``MultimodalError`` for audio to a projector without an audio
        encoder.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected the bytes of an image or audio file, got {type(data).__name__}")
        if not data:
            raise MediaDecodeError("the image is empty (0 bytes)")
        size = image_size(bytes(data[:65536]))
        if size is not None and size[0] * size[1] > self.max_image_pixels:
            raise MediaDecodeError(
                f"the image has {size[0]}x{size[1]} pixels, more than max_image_pixels "
                f"({self.max_image_pixels}); scale it down first"
            )
        buf = ffi.from_buffer("unsigned char[]", data)
        with self.gate, CallLog() as log:
            result = lib.mtmd_helper_bitmap_init_from_buf(
                self.handle, buf, len(buf), False, lib.mtmd_helper_init_opt_default()
            )
        if result.video_ctx != ffi.NULL:
            lib.mtmd_helper_video_free(result.video_ctx)
            if result.bitmap != ffi.NULL:
                lib.mtmd_bitmap_free(result.bitmap)
            raise MediaDecodeError("video input is not supported")
        if result.bitmap == ffi.NULL:
            reason = log.errors
            if "does not support audio" in reason:
                raise self._lacks("audio")
            what, formats = "an image", "PNG, JPEG, BMP, GIF, TGA, PSD, PNM"
            if self.supports_audio:
                what, formats = "an image or audio", formats + "; WAV, MP3, FLAC"
            raise MediaDecodeError(
                f"could not decode {len(data)} bytes as {what}: corrupt, truncated, or not a supported "
                f"format ({formats})" + (f": {reason}" if reason else "")
            )
        bitmap = Bitmap(result.bitmap)
        if not bitmap.is_audio and (bitmap.width == 0 or bitmap.height == 0):
            bitmap.close()
            raise MediaDecodeError("the image has no pixels (zero width or height)")
        return bitmap

    def image_file(self, path: str | os.PathLike[str]) -> Bitmap:
        """Decode an image (or audio) file from disk; see ``media``."""
        file = Path(path)
        if not file.is_file():
            raise MediaDecodeError(f"no such image file: {file}")
        return self.media(file.read_bytes())

    def rgb(self, width: int, height: int, pixels: bytes) -> Bitmap:
        """An image from raw RGB bytes (``width * height * 3``, row by row)."""
        if width <= 0 or height <= 0:
            raise MediaDecodeError(f"an image needs a positive width and height, not {width}x{height}")
        if len(pixels) != width * height * 3:
            raise MediaDecodeError(
                f"a {width}x{height} RGB image has {width * height * 3} bytes, not {len(pixels)}"
            )
        raw = lib.mtmd_bitmap_init(width, height, ffi.from_buffer("unsigned char[]", pixels))
        if raw == ffi.NULL:
            raise MemoryError("could not allocate the bitmap")
        bitmap = Bitmap(raw)
        digest = hashlib.sha256(b"rgb %d %d\0" % (width, height) + bytes(pixels)).hexdigest()
        lib.mtmd_bitmap_set_id(raw, digest.encode())
        return bitmap

    def audio(self, samples: Sequence[float] | bytes) -> Bitmap:
        """An audio clip from mono PCM at ``audio_sample_rate``: floats, or float32 bytes."""
        if not self.supports_audio:
            raise self._lacks("audio")
        data = (
            ffi.from_buffer("float[]", samples)
            if isinstance(samples, (bytes, bytearray, memoryview))
            else ffi.new("float[]", list(samples))
        )
        if len(data) == 0:
            raise MediaDecodeError("the audio clip is empty")
        raw = lib.mtmd_bitmap_init_from_audio(len(data), data)
        if raw == ffi.NULL:
            raise MemoryError("could not allocate the audio clip")
        digest = hashlib.sha256(b"pcm\0" + bytes(ffi.buffer(data))).hexdigest()
        lib.mtmd_bitmap_set_id(raw, digest.encode())
        return Bitmap(raw)

    # -- prompts --------------------------------------------------------------------------
    def tokenize(
        self, text: str, media: Sequence[Bitmap], *, add_special: bool = False, parse_special: bool = True
    ) -> MultimodalPrompt:
        """Tokenize ``text``, in which each ``marker`` stands for the next of ``media``.

        The images are preprocessed here (resized, normalised); encoding waits
        until the engine decodes the prompt.  ``add_special`` adds the model's
        BOS.  Raises ``MediaMarkerError`` when markers and media differ in number,
        ``MediaDecodeError`` when preprocessing fails.
        """
        n_markers = text.count(self.marker)
        if n_markers != len(media):
            raise MediaMarkerError(
                f"the prompt has {n_markers} media marker(s) ({self.marker}) but {len(media)} "
                "image(s)/audio clip(s) were given; give one per marker"
            )
        for item in media:
            if not (self.supports_audio if item.is_audio else self.supports_vision):
                raise self._lacks("audio" if item.is_audio else "vision")
        encoded = text.encode("utf-8")
        text_c = ffi.new("char[]", encoded)
        inp = ffi.new("mtmd_input_text *")
        inp.text, inp.text_len = text_c, len(encoded)
        inp.add_special, inp.parse_special = add_special, parse_special
        bitmaps = ffi.new("mtmd_bitmap *[]", [item.handle for item in media])
        chunks = ffi.gc(lib.mtmd_input_chunks_init(), lib.mtmd_input_chunks_free)
        with self.gate, CallLog() as log:
            status = lib.mtmd_tokenize(self.handle, chunks, inp, bitmaps, len(media))
        if status == 1:
            raise MediaMarkerError(f"media markers and media differ in number: {log.errors}")
        if status != 0:
            raise MediaDecodeError(f"could not preprocess the image(s)/audio: {log.reason()}")
        pieces: list[tuple[int, ...] | MediaChunk] = []
        seen: dict[str, int] = {}
        n_tokens = ffi.new("size_t *")
        for i in range(lib.mtmd_input_chunks_size(chunks)):
            chunk = lib.mtmd_input_chunks_get(chunks, i)
            if lib.mtmd_input_chunk_get_type(chunk) == lib.MTMD_INPUT_CHUNK_TYPE_TEXT:
                tokens = lib.mtmd_input_chunk_get_tokens_text(chunk, n_tokens)
                pieces.append(tuple(ffi.unpack(tokens, n_tokens[0])))
                continue
            raw_id = lib.mtmd_input_chunk_get_id(chunk)
            content = "" if raw_id == ffi.NULL else ffi.string(raw_id).decode()
            occurrence = seen.get(content, 0)
            seen[content] = occurrence + 1
            pieces.append(MediaChunk(self, chunk, occurrence))
        ffi.release(chunks)
        return MultimodalPrompt(tuple(pieces))

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, chunk: MediaChunk) -> Any:
        """Run the encoder on ``chunk``: its embeddings, ``n_tokens * n_embd`` floats (a cffi array)."""
        with self.gate, self._lock:
            handle = self.handle
            with CallLog() as log:
                status = lib.mtmd_encode_chunk(handle, chunk.handle)
            if status != 0:
                raise MediaDecodeError(f"encoding the {chunk.kind} failed: {log.reason()}")
            count = chunk.n_tokens * self._n_embd_inp
            embeddings = ffi.new("float[]", count)
            ffi.memmove(embeddings, lib.mtmd_get_output_embd(handle), count * ffi.sizeof("float"))
            return embeddings

    def decode(self, chunk: MediaChunk, embeddings: Any, context: Context, pos: int, seq_id: int) -> int:
        """Decode ``chunk``'s embeddings (from ``encode``) into ``seq_id`` at ``pos``; llama_decode's status.

        Non-causal attention is switched on for the chunk where the model needs
        it (Gemma 3), so the chunk must then fit in one micro-batch (the engine
        checks).  Not thread-safe with other decodes on ``context``.
        """
        new_pos = ffi.new("llama_pos *")
        with self.gate, context.gate, self._lock:
            return int(
                lib.mtmd_helper_decode_image_chunk(
                    self.handle, context.handle, chunk.handle, embeddings, pos, seq_id,
                    context.n_batch, new_pos, ffi.NULL, ffi.NULL,
                )
            )  # fmt: skip
