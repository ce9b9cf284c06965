"""Named chat templates for models whose GGUF carries none.

The default test model (Gemma 3 270M, a base model) has no template; for it
we use ``gemma``: Gemma's own turn markers, which its vocabulary has as
special tokens.  Other models without a template fall back to ``chatml``.
Templates are Jinja, rendered by llama.cpp's template engine.
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
{%- set ns.preamble = ns.preamble + 'You can call these tools. To call one, answer with only a JSON object '
    + '{"name": <tool name>, "arguments": <arguments object>}.\\n' -%}
{%- for tool in tools -%}
{%- set ns.preamble = ns.preamble + (tool | tojson) + '\\n' -%}
{%- endfor -%}
{%- set ns.preamble = ns.preamble + '\\n' -%}
{%- endif -%}
{%- for message in turns -%}
{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}
{{- '<start_of_turn>' + role + '\\n' -}}
{%- if loop.first -%}{{- ns.preamble -}}{%- endif -%}
{%- if message['role'] == 'tool' -%}{{- 'Tool result: ' -}}{%- endif -%}
{%- if message['content'] -%}{{- message['content'] | trim -}}{%- endif -%}
{%- if message['tool_calls'] -%}
{%- for call in message['tool_calls'] -%}
{{- {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson -}}
{%- endfor -%}
{%- endif -%}
{{- '<end_of_turn>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
"""

CHATML = """{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\\n' -}}
{%- if message['content'] -%}{{- message['content'] -}}{%- endif -%}
{%- if message['tool_calls'] -%}
{%- for call in message['tool_calls'] -%}{{- (call['function'] | tojson) -}}{%- endfor -%}
{%- endif -%}
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
