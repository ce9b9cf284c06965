"""LlamaIndex messages as the OpenAI-style dicts our chat templates render, and replies as messages."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)

# LlamaIndex roles that OpenAI-style chat templates know under another name.
_ROLES = {"developer": "system", "chatbot": "assistant", "model": "assistant", "function": "tool"}


def tool_arguments(arguments: Any) -> Any:
    """Tool-call arguments as a dict (they travel as a JSON string in OpenAI format); unparsable: as is."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def call_arguments(call: ToolCallBlock, partial: bool = False) -> dict[str, Any]:
    """A call's arguments ({} while still ``partial``), or a clear error for a call cut short."""
    arguments = tool_arguments(call.tool_kwargs)
    if isinstance(arguments, dict):
        return arguments
    if partial:
        return {}
    raise ValueError(
        f"the call of tool {call.tool_name!r} has arguments that are not a JSON object: "
        f"{call.tool_kwargs!r}; "
        "was the generation cut short by max_new_tokens / max_tokens?"
    )


def assistant_message(content: str, tool_calls: list[dict[str, Any]], thinking: str = "") -> ChatMessage:
    """The reply: thinking, text, each call as a ``ToolCallBlock`` and, for older readers, OpenAI dicts."""
    blocks: list[Any] = [ThinkingBlock(content=thinking)] if thinking else []
    if content or not tool_calls:
        blocks.append(TextBlock(text=content))
    blocks.extend(
        ToolCallBlock(
            tool_call_id=call["id"],
            tool_name=call["function"]["name"],
            tool_kwargs=tool_arguments(call["function"]["arguments"]),
        )
        for call in tool_calls
    )
    extra = {"tool_calls": tool_calls} if tool_calls else {}
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def to_openai_message(message: ChatMessage) -> dict[str, Any]:
    """A LlamaIndex message as the OpenAI-style dict the chat template renders."""
    role = message.role.value
    media = any(isinstance(block, ImageBlock | AudioBlock) for block in message.blocks)
    content = [p for p in map(_content_part, message.blocks) if p] if media else message.content or ""
    out: dict[str, Any] = {"role": _ROLES.get(role, role), "content": content}
    calls = [
        {
            "id": block.tool_call_id or block.tool_name,
            "type": "function",
            "function": {"name": block.tool_name, "arguments": _json_text(block.tool_kwargs)},
        }
        for block in message.blocks
        if isinstance(block, ToolCallBlock)
    ]
    known = {call["id"] for call in calls}
    for call in message.additional_kwargs.get("tool_calls") or []:
        call = dict(call) if isinstance(call, Mapping) else call.model_dump()
        if call.get("id") not in known:
            calls.append(call)
    if calls:
        out["tool_calls"] = calls
    for key in ("tool_call_id", "name"):
        if message.additional_kwargs.get(key):
            out[key] = message.additional_kwargs[key]
    return out


def _content_part(block: Any) -> dict[str, Any] | None:
    """A text, image or audio block as an OpenAI content part (other blocks: None)."""
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ImageBlock):
        if isinstance(block.image, bytes):  # base64 text, as ImageBlock keeps it
            url = f"data:{block.image_mimetype or 'image/*'};base64,{block.image.decode()}"
        elif block.path is not None:
            url = os.fspath(block.path)
        elif block.url is not None:
            url = str(block.url)
        else:
            raise ValueError("an ImageBlock needs image bytes, a path or a url")
        return {"type": "image_url", "image_url": {"url": url}}
    if isinstance(block, AudioBlock):
        data = block.resolve_audio(as_base64=True).read().decode()
        return {"type": "input_audio", "input_audio": {"data": data, "format": block.format or "wav"}}
    return None


def _json_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)
