"""llama-cpp-python's multimodal chat handler names, for ``Llama(chat_handler=...)`` drop-in use.

In llama-cpp-python a chat handler loads the projector (``clip_model_path``) and
hard-codes one model family's prompt format.  Here libmtmd serves every
projector type and the model's own chat template places the images, so a
handler only names the projector: ``Llama(model_path, chat_handler=
Llava15ChatHandler(clip_model_path=...))`` is ``Llama(model_path, mmproj_path=...)``.
"""

from __future__ import annotations

import os


class MultimodalChatHandler:
    """Names a projector (mmproj GGUF) for ``Llama(chat_handler=...)``."""

    def __init__(self, clip_model_path: str | os.PathLike[str], verbose: bool = True) -> None:
        self.clip_model_path = os.fspath(clip_model_path)
        self.verbose = verbose

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clip_model_path={self.clip_model_path!r})"


class Llava15ChatHandler(MultimodalChatHandler):
    """LLaVA 1.5 in llama-cpp-python; here any projector type."""


class Llava16ChatHandler(MultimodalChatHandler):
    """LLaVA 1.6 in llama-cpp-python; here any projector type."""


class MoondreamChatHandler(MultimodalChatHandler):
    """Moondream in llama-cpp-python; here any projector type."""


class NanoLlavaChatHandler(MultimodalChatHandler):
    """nanoLLaVA in llama-cpp-python; here any projector type."""


class MiniCPMv26ChatHandler(MultimodalChatHandler):
    """MiniCPM-V 2.6 in llama-cpp-python; here any projector type."""


class Qwen25VLChatHandler(MultimodalChatHandler):
    """Qwen2.5-VL in llama-cpp-python; here any projector type."""
