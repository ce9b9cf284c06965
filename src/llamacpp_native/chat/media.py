"""Images and audio in OpenAI chat messages: content parts -> media markers plus the media's bytes.

``split_media`` turns the ``image_url`` and ``input_audio`` parts of messages
into ``{"type": "media_marker"}`` parts, which llama.cpp's chat templates render
in place, and returns the bytes of each medium in order.  Where bytes may come
from is a ``MediaPolicy``: ``data:`` URLs and base64 always; local files
(``file://`` or a path) where allowed; ``http(s)`` only when switched on, with
a size limit and a timeout.
"""

from __future__ import annotations

import base64
import binascii
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llamacpp_native.errors import MediaDecodeError, MediaSourceError

MediaKind = Literal["image", "audio"]


@dataclass(frozen=True)
class MediaPolicy:
    """Where the bytes of images and audio in messages may come from.

    ``data:`` URLs (and bare base64) are always accepted.  Local files are read
    when ``allow_files`` is on, only under ``file_root`` if one is set.  Remote
    ``http(s)`` URLs are refused unless ``allow_remote`` is on; then each fetch
    is limited to ``max_bytes`` and ``timeout`` seconds.  ``max_bytes`` also
    bounds decoded ``data:`` URLs and files.
    """

    allow_files: bool = True
    file_root: Path | None = None
    allow_remote: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0


LOCAL = MediaPolicy()
"""The policy of a library in the user's own process: local files yes, the network no."""


@dataclass(frozen=True)
class MediaSource:
    """The bytes of one image or audio file, and which kind the message said it was."""

    kind: MediaKind
    data: bytes


def split_media(
    messages: Sequence[Mapping[str, Any]], marker: str, policy: MediaPolicy
) -> tuple[list[dict[str, Any]], list[MediaSource]]:
    """Messages with each image/audio part replaced by a media marker part, and the media in order."""
    out: list[dict[str, Any]] = []
    sources: list[MediaSource] = []
    for message in messages:
        copy = dict(message)
        content = copy.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                source = _source(part, policy) if isinstance(part, Mapping) else None
                if source is None:
                    parts.append(part)
                else:
                    sources.append(source)
                    parts.append({"type": "media_marker", "text": marker})
            copy["content"] = parts
        out.append(copy)
    return out, sources


def has_media(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any message has an image or audio part."""
    return any(
        isinstance(part, Mapping) and part.get("type") in ("image_url", "input_audio")
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def _source(part: Mapping[str, Any], policy: MediaPolicy) -> MediaSource | None:
    kind = part.get("type")
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, Mapping) else spec
        if not isinstance(url, str) or not url:
            raise MediaSourceError('an image_url part needs {"image_url": {"url": "data:..." or a path}}')
        return MediaSource("image", load_url(url, policy))
    if kind == "input_audio":
        spec = part.get("input_audio")
        data = spec.get("data") or spec.get("url") if isinstance(spec, Mapping) else None
        if not isinstance(data, str) or not data:
            raise MediaSourceError(
                'an input_audio part needs {"input_audio": {"data": "<base64>", "format": ...}}'
            )
        return MediaSource("audio", load_url(data, policy))
    return None


def load_url(url: str, policy: MediaPolicy) -> bytes:
    """The bytes a media URL names: ``data:``, ``file://``, a local path, bare base64, or ``http(s)``."""
    scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
    if scheme == "data":
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            raise MediaSourceError(
                f"a data: URL must be base64 (data:<type>;base64,...), not {header[:40]!r}"
            )
        return _base64(payload, policy)
    if scheme in ("http", "https"):
        return _fetch(url, policy)
    if scheme == "file" or url.startswith(("/", "./", "../", "~")) or (os.sep != "/" and ":\\" in url[:3]):
        return _read_file(urllib.parse.unquote(url[7:]) if scheme == "file" else url, policy)
    if scheme:
        raise MediaSourceError(f"unsupported media URL scheme {scheme!r}: use data:, file:// or a path")
    if policy.allow_files and len(url) < 4096 and os.path.isfile(url):
        return _read_file(url, policy)  # a relative path
    return _base64(url, policy)  # OpenAI's input_audio.data, and llama-server's bare base64


def _base64(payload: str, policy: MediaPolicy) -> bytes:
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise MediaSourceError(f"the medium is larger than the {policy.max_bytes}-byte limit")
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MediaDecodeError(
            "the image or audio is neither a data: URL, a path, nor valid base64"
        ) from None
    if not data:
        raise MediaDecodeError("the medium is empty (0 bytes)")
    return data


def _read_file(path: str, policy: MediaPolicy) -> bytes:
    if not policy.allow_files:
        raise MediaSourceError(
            "local files are not allowed by this media policy: send the image as a data: URL (base64)"
        )
    file = Path(path).expanduser()
    if policy.file_root is not None:
        root = policy.file_root.resolve()
        file = (root / file.relative_to("/") if file.is_absolute() else root / file).resolve()
        if not file.is_relative_to(root):
            raise MediaSourceError(f"{path} lies outside the allowed media folder")
    if not file.is_file():
        raise MediaSourceError(f"no such image or audio file: {path}")
    if file.stat().st_size > policy.max_bytes:
        raise MediaSourceError(f"{path} is larger than the {policy.max_bytes}-byte limit")
    return file.read_bytes()


def _fetch(url: str, policy: MediaPolicy) -> bytes:
    if not policy.allow_remote:
        raise MediaSourceError(
            f"remote media URLs are refused ({url[:60]}): fetching them would let a prompt make this "
            "process open network connections. Send the image as a data: URL, or enable fetching "
            "explicitly (MediaPolicy(allow_remote=True), with its size limit and timeout)"
        )
    request = urllib.request.Request(url, headers={"User-Agent": "llamacpp-integrations"})
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    try:
        with opener.open(request, timeout=policy.timeout) as response:
            data: bytes = response.read(policy.max_bytes + 1)
    except OSError as error:
        raise MediaSourceError(f"could not fetch {url[:60]}: {error}") from None
    if len(data) > policy.max_bytes:
        raise MediaSourceError(f"{url[:60]} is larger than the {policy.max_bytes}-byte limit")
    return data


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would also follow one to ftp)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise MediaSourceError(f"refused a redirect to {newurl[:60]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)
