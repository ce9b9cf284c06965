"""OpenAI-shaped result dictionaries (completions, chat, embeddings)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from llamacpp_native.engine.types import TokenLogprob


def new_id(prefix: str) -> str:
    """A fresh response id such as ``cmpl-…`` or ``chatcmpl-…``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    draft_tokens: int = 0,
    draft_accepted: int = 0,
) -> dict[str, Any]:
    """The ``usage`` block; ``prompt_tokens_details.cached_tokens`` came from the prefix cache.

    Under speculative decoding, ``completion_tokens_details`` counts the guesses that were
    right (``accepted_prediction_tokens``) and wrong (``rejected_prediction_tokens``), the
    fields OpenAI uses for predicted outputs.
    """
    block: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    if draft_tokens:
        block["completion_tokens_details"] = {
            "accepted_prediction_tokens": draft_accepted,
            "rejected_prediction_tokens": draft_tokens - draft_accepted,
        }
    return block


def completion_logprobs(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """Legacy completions ``logprobs`` block: tokens, offsets, logprobs, top alternatives."""
    offsets: list[int] = []
    for item in items:
        offsets.append(offset)
        offset += len(item.text)
    return {
        "tokens": [i.text for i in items],
        "text_offset": offsets,
        "token_logprobs": [i.logprob for i in items],
        "top_logprobs": [dict(i.top) for i in items],
    }


def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    """Chat ``logprobs`` block: ``content`` with per-token ``top_logprobs``, ``bytes`` the token's own."""
    return {
        "content": [
            {
                "token": i.text,
                "logprob": i.logprob,
                "bytes": list(i.piece or i.text.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(raw)}
                    for (t, lp), raw in zip(
                        i.top, i.top_pieces or [t.encode("utf-8") for t, _ in i.top], strict=True
                    )
                ],
            }
            for i in items
        ]
    }


def completion(
    response_id: str,
    model: str,
    text: str,
    finish_reason: str | None,
    logprobs: dict[str, Any] | None,
    token_usage: dict[str, int] | None,
    object_name: str = "text_completion",
    index: int = 0,
) -> dict[str, Any]:
    """A ``text_completion`` response (or one streamed chunk of it)."""
    result: dict[str, Any] = {
        "id": response_id,
        "object": object_name,
        "created": int(time.time()),
        "model": model,
        "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}],
    }
    if token_usage is not None:
        result["usage"] = token_usage
    return result


def chat_completion(
    response_id: str,
    model: str,
    message: dict[str, Any],
    finish_reason: str,
    logprobs: dict[str, Any] | None,
    token_usage: dict[str, int],
) -> dict[str, Any]:
    """A ``chat.completion`` response."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}],
        "usage": token_usage,
    }


def prompt_progress(total: int, cached: int, processed: int) -> dict[str, int]:
    """llama-server's ``prompt_progress``: ``processed`` of ``total`` prompt tokens read, ``cache`` reused."""
    return {"total": total, "cache": cached, "processed": processed}


def chat_chunk(
    response_id: str,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    token_usage: dict[str, int] | None = None,
    logprobs: dict[str, Any] | None = None,
    index: int = 0,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a stream (of choice ``index``)."""
    chunk: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }
    if token_usage is not None:
        chunk["usage"] = token_usage
    return chunk


def embedding_response(model: str, vectors: list[list[float]], prompt_tokens: int) -> dict[str, Any]:
    """A ``list`` of ``embedding`` objects."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def collect_completion(
    chunks: Iterable[dict[str, Any]], with_logprobs: bool, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One ``text_completion`` dict from its chunks (``usage``: the last chunk's unless given)."""
    response_id, texts, last, logprob_items = "", [], None, []
    for chunk in chunks:
        response_id = chunk["id"]
        choice = chunk["choices"][0]
        texts.append(choice["text"])
        if choice["logprobs"]:
            logprob_items.append(choice["logprobs"])
        last = chunk
    assert last is not None
    return completion(
        response_id,
        last["model"],
        "".join(texts),
        last["choices"][0]["finish_reason"],
        _merge_completion_logprobs(logprob_items) if with_logprobs else None,
        usage if usage is not None else last.get("usage"),
    )


def _merge_completion_logprobs(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
    for block in blocks:
        for key in merged:
            merged[key].extend(block[key])
    return merged


def collect_chat(chunks: Iterable[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``chat.completion`` dict from its chunks (``usage``: the finishing chunk's unless given).

    Tool-call fragments are joined by their ``index`` (and dropped when the reply
    finished with ``stop``: their text was malformed and came back as content);
    ``reasoning_content`` is kept beside ``content``, as llama-server returns it.
    """
    response_id, model, finish = "", "", "stop"
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    token_usage: dict[str, Any] = {}
    logprob_content: list[Any] = []
    for chunk in chunks:
        response_id, model = chunk["id"], chunk["model"]
        choice = chunk["choices"][0]
        delta = choice["delta"]
        content.append(delta.get("content") or "")
        reasoning.append(delta.get("reasoning_content") or "")
        for fragment in delta.get("tool_calls") or ():
            call = calls.get(fragment["index"])
            if call is None:
                calls[fragment["index"]] = {
                    "id": fragment.get("id") or new_id("call"),
                    "type": "function",
                    "function": dict(fragment["function"]),
                }
            else:
                call["function"]["arguments"] += fragment["function"].get("arguments", "")
        if choice.get("logprobs"):
            logprob_content.extend(choice["logprobs"]["content"])
        if choice["finish_reason"]:
            finish = choice["finish_reason"]
            token_usage = chunk.get("usage", {})
    if finish == "stop":
        calls = {}  # fragments of a call whose text turned out malformed at the end: the reply is text
    text = "".join(content)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    logprobs = {"content": logprob_content} if logprob_content else None
    return chat_completion(
        response_id, model, message, finish, logprobs, usage if usage is not None else token_usage
    )
