"""The server's endpoints, one router per concern."""

from llamacpp_integrations.server.routes.anthropic import router as anthropic
from llamacpp_integrations.server.routes.embeddings import router as embeddings
from llamacpp_integrations.server.routes.generation import router as generation
from llamacpp_integrations.server.routes.info import router as info
from llamacpp_integrations.server.routes.native import router as native
from llamacpp_integrations.server.routes.rerank import router as rerank
from llamacpp_integrations.server.routes.responses import router as responses
from llamacpp_integrations.server.routes.tokens import router as tokens

ROUTERS = (info, generation, embeddings, rerank, tokens, native, responses, anthropic)

__all__ = ["ROUTERS"]
