"""``Llama``'s fill-in-the-middle prompts, built from the FIM tokens of the model's own vocabulary.

The layout is llama-server's repository-level one: the repository token and a project name,
each extra file as the file-separator token, its name and its text (a plain snippet marker
where the vocabulary has no file separator), the current file's separator, then
prefix-suffix-middle (or suffix-prefix-middle)::

    [REP]myproject\\n [SEP]a.py\\n <text> ... [SEP]filename\\n [PRE]<prefix><prompt> [SUF]<suffix> [MID]

Unlike llama-server, BOS (where the model wants one) opens the sequence rather than following
the extra files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llamacpp_native.api.base import LlamaBase
from llamacpp_native.errors import NotSupportedError

REPOSITORY_NAME = "myproject"
"""The project name after the repository token (llama-server's)."""
CURRENT_FILE_NAME = "filename"
"""The name given to the file being edited (llama-server's)."""
EXTRA_FILE_NAME = "tmp"
"""The name of an extra file given without one."""
SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"
"""What separates extra files for a vocabulary without a file-separator token."""

ExtraFile = Mapping[str, str]
"""An extra file of context: ``{"text": ..., "filename": ...}`` (the name is optional)."""


class LlamaInfill(LlamaBase):
    # -- fill-in-the-middle ------------------------------------------------------------------
    def infill_tokens(
        self,
        prefix: str | Sequence[int],
        suffix: str | Sequence[int],
        *,
        prompt: str = "",
        extra: Sequence[ExtraFile] = (),
        spm: bool = False,
        fit: bool = False,
        max_tokens: int | None = None,
    ) -> list[int]:
        """The prompt that asks the model for the text between ``prefix`` and ``suffix``.

        ``prompt`` is text that follows the prefix and that the answer continues; ``extra`` are
        other files of the project, as context.  ``spm`` puts the suffix first (for models trained
        that way).  ``fit`` crops as llama-server does, so that the prompt fits whatever the
        inputs: the prefix to its last 3/4 of ``n_batch`` tokens, the suffix to its first
        ``n_batch / 4`` less the prompt, and the extra files to their last ``n_ctx - n_batch -
        2 * max_tokens`` tokens.  Raises ``NotSupportedError`` (a ``ValueError``) when the
        vocabulary lacks the prefix, suffix or middle token.
        """
        vocab = self.model.vocab
        fim = vocab.fim
        if not fim.complete:
            raise NotSupportedError(
                f"{self.model.name} cannot fill in the middle: its vocabulary lacks the FIM tokens "
                f"it needs ({', '.join(fim.missing())}); infill needs a code model trained for it"
            )
        before, after = self._text_tokens(prefix), self._text_tokens(suffix)
        asked = self.tokenize(prompt, add_bos=False, special=True) if prompt else []
        files = self._extra_tokens(extra, fim.rep, fim.sep)
        if fit:
            n_batch = int(self._context_kwargs["n_batch"])
            before = before[max(0, len(before) - 3 * (n_batch // 4)) :]
            after = after[: max(0, n_batch // 4 - (2 + len(asked)))]
            room = max(0, self.engine.n_ctx - n_batch - 2 * max(0, max_tokens or 0))
            files = files[max(0, len(files) - room) :]
        head = [fim.pre, *before, *asked]
        tail = [fim.suf, *after]
        first, second = (tail, head) if spm else (head, tail)
        start = [vocab.bos] if vocab.add_bos else []
        return [*start, *files, *first, *second, fim.mid]

    def _text_tokens(self, text: str | Sequence[int]) -> list[int]:
        if isinstance(text, str):
            return self.tokenize(text, add_bos=False)
        tokens = list(text)
        self.model.vocab.check_tokens(tokens)
        return tokens

    def _extra_tokens(self, extra: Sequence[ExtraFile], rep: int, sep: int) -> list[int]:
        """The repository and extra files part: empty without either."""
        if isinstance(extra, Mapping):
            raise TypeError("extra must be a list of {'filename', 'text'} objects, not one object")
        tokens: list[int] = []
        if rep >= 0:
            tokens += [rep, *self.tokenize(f"{REPOSITORY_NAME}\n", add_bos=False)]
        for index, item in enumerate(extra):
            text, name = item.get("text"), item.get("filename", EXTRA_FILE_NAME)
            if not isinstance(text, str) or not isinstance(name, str):
                raise TypeError(f"extra file {index} needs a 'text' string (and a 'filename' string, if any)")
            if sep >= 0:
                tokens += [sep, *self.tokenize(f"{name}\n", add_bos=False)]
            else:
                tokens += self.tokenize(SNIPPET_SEPARATOR, add_bos=False)
            tokens += self.tokenize(text, add_bos=False)
        if sep >= 0:
            tokens += [sep, *self.tokenize(f"{CURRENT_FILE_NAME}\n", add_bos=False)]
        return tokens
