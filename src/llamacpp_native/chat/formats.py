"""Named chat templates for models whose GGUF carries none.

The default test model (Gemma 3 270M, a base model) has no template; for it
we use ``gemma``: Gemma's own turn markers, which its vocabulary has as
special tokens.  Other models without a template fall back to ``chatml``.
Templates are Jinja, rendered by llama.cpp's template engine.  Both render
past tool calls as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``:
from that marker llama.cpp learns where a call starts, so with
``tool_choice="auto"`` its grammar engages lazily at the marker and ends the
turn after the call.  The tools are listed without spelling out the marker,
which a small base model would otherwise copy into plain answers.
"""

from __future__ import annotations

GEMMA = """{{- bos_token -}}
{%- set ns = namespace(preamble='') -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set ns.preamble = messages[0]['content'] + '\\n\\n' -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set turns = messages -%}
{%- endif -%}
{%- if tools -%}
{%- set ns.preamble = ns.preamble + 'You have these tools:\\n' -%}
{%- for tool in tools -%}
{%- set ns.preamble = ns.preamble + (tool | tojson) + '\\n' -%}
{%- endfor -%}
{%- endif -%}
{%- for message in turns -%}
{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' -}}
{%- if loop.first -%}{{- ns.preamble -}}{%- endif -%}
{%- if message['role'] == 'tool' -%}{{- 'Tool result: ' -}}{%- endif -%}
{%- if message['content'] -%}{{- message['content'] | trim -}}{%- endif -%}
{%- for call in message['tool_calls'] or [] -%}
{{- '<tool_call>' + ({'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson)
    + '</tool_call>' -}}
{%- endfor -%}
{{- '<end_of_turn>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
"""

CHATML = """{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\\n' -}}
{%- if loop.first and tools -%}
{{- 'You have these tools:\\n' -}}
{%- for tool in tools -%}{{- (tool | tojson) + '\\n' -}}{%- endfor -%}
{%- endif -%}
{%- if message['content'] -%}{{- message['content'] -}}{%- endif -%}
{%- for call in message['tool_calls'] or [] -%}
{{- '<tool_call>' + ({'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson)
    + '</tool_call>' -}}
{%- endfor -%}
{{- '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""

CHAT_FORMATS: dict[str, str] = {"gemma": GEMMA, "chatml": CHATML}


def template_for(chat_format: str | None, architecture: str, model_template: str | None) -> str | None:
    """The template to use: a named format, else the model's own, else a fallback.

    Returns ``None`` when the model's own template should be used.
    """
    if chat_format is not None:
        if chat_format not in CHAT_FORMATS:
            raise ValueError(f"unknown chat_format {chat_format!r}; choose one of {sorted(CHAT_FORMATS)}")
        return CHAT_FORMATS[chat_format]
    if model_template:
        return None
    return GEMMA if architecture.startswith("gemma") else CHATML
