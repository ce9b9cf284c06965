"""An OpenAI-compatible server on llamacpp_native's engine (``pip install 'llamacpp-integrations[server]'``).

Run ``python -m llamacpp_integrations.server --model PATH`` (or ``llamacpp-server``),
or build the ASGI app yourself with ``create_app(ServerSettings(model=PATH))``.
"""

from llamacpp_integrations._extras import require_extra

require_extra("server", "fastapi", "uvicorn", "sse_starlette", "pydantic_settings", "yaml", "jsonschema")

from llamacpp_integrations.server.app import create_app  # noqa: E402
from llamacpp_integrations.server.settings import ModelSettings, ServerSettings  # noqa: E402

__all__ = ["ModelSettings", "ServerSettings", "create_app"]
