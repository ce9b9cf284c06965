"""Tokenizer access: text <-> tokens for one loaded model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from llamacpp_native.binding._library import ffi, lib, take_message
from llamacpp_native.errors import TokenizeError


class FimTokens(NamedTuple):
    """A vocabulary's fill-in-the-middle tokens (-1 where it has none), as llama.cpp found them:
    from ``tokenizer.ggml.fim_*_token_id`` metadata, else from well-known token texts."""

    pre: int
    suf: int
    mid: int
    pad: int
    rep: int
    sep: int

    @property
    def complete(self) -> bool:
        """Whether the prefix, suffix and middle tokens are all there (what an infill prompt needs)."""
        return min(self.pre, self.suf, self.mid) >= 0

    def missing(self) -> list[str]:
        """The names of the needed tokens the vocabulary lacks (prefix, suffix, middle)."""
        named = (("prefix", self.pre), ("suffix", self.suf), ("middle", self.mid))
        return [name for name, token in named if token < 0]


class Vocab:
    """The vocabulary of a model; valid while its model is open.

    Obtained as ``Model.vocab``; it holds a reference to its model so the model
    cannot be freed underneath it, and each call runs inside the model's gate,
    so closing the model waits for it.
    """

    def __init__(self, owner: Any, handle: Any) -> None:
        self._owner = owner  # keeps the model alive
        self._gate = owner.gate
        self._handle = handle
        self.n_tokens: int = lib.llama_vocab_n_tokens(handle)
        self._piece_buf = ffi.new("char[]", 256)

    @property
    def handle(self) -> Any:
        """The raw ``const llama_vocab *`` (checked to be still open; use it inside ``model.gate``)."""
        self._owner._check_open()
        return self._handle

    @property
    def bos(self) -> int:
        """Beginning-of-sequence token id (-1 if none)."""
        with self._gate:
            return int(lib.llama_vocab_bos(self.handle))

    @property
    def eos(self) -> int:
        """End-of-sequence token id (-1 if none)."""
        with self._gate:
            return int(lib.llama_vocab_eos(self.handle))

    @property
    def eot(self) -> int:
        """End-of-turn token id (-1 if none)."""
        with self._gate:
            return int(lib.llama_vocab_eot(self.handle))

    @property
    def sep(self) -> int:
        """Separator token id (BERT's ``[SEP]``; -1 if none)."""
        with self._gate:
            return int(lib.llama_vocab_sep(self.handle))

    @property
    def add_bos(self) -> bool:
        """Whether tokenizing with ``add_special`` prepends BOS."""
        with self._gate:
            return bool(lib.llama_vocab_get_add_bos(self.handle))

    @property
    def add_eos(self) -> bool:
        """Whether the model wants EOS after a text (a pair's parts, for rerankers)."""
        with self._gate:
            return bool(lib.llama_vocab_get_add_eos(self.handle))

    @property
    def add_sep(self) -> bool:
        """Whether the model wants SEP between the texts of a pair (BERT-style rerankers)."""
        with self._gate:
            return bool(lib.llama_vocab_get_add_sep(self.handle))

    @property
    def fim(self) -> FimTokens:
        """The fill-in-the-middle tokens (prefix, suffix, middle, pad, repository, file separator)."""
        with self._gate:
            handle = self.handle
            return FimTokens(
                int(lib.llama_vocab_fim_pre(handle)),
                int(lib.llama_vocab_fim_suf(handle)),
                int(lib.llama_vocab_fim_mid(handle)),
                int(lib.llama_vocab_fim_pad(handle)),
                int(lib.llama_vocab_fim_rep(handle)),
                int(lib.llama_vocab_fim_sep(handle)),
            )

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends generation (EOS, EOT and similar)."""
        with self._gate:
            return bool(lib.llama_vocab_is_eog(self.handle, token))

    def is_control(self, token: int) -> bool:
        """Whether ``token`` is a control (special) token."""
        with self._gate:
            return bool(lib.llama_vocab_is_control(self.handle, token))

    def tokenize(self, text: str | bytes, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Turn text into token ids.

        ``add_special`` adds BOS/EOS as the model wants; ``parse_special`` lets
        special-token text such as ``<start_of_turn>`` become the special token.
        """
        if isinstance(text, str):
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise TokenizeError(
                    f"text cannot be encoded as UTF-8 ({error.reason} at {error.start}); "
                    "pass bytes to tokenize raw bytes"
                ) from None
        elif isinstance(text, (bytes, bytearray)):
            data = bytes(text)  # any byte sequence, as llama.cpp's tokenizer takes it
        else:
            raise TokenizeError(f"text must be str or bytes, not {type(text).__name__}")
        with self._gate:
            count, tokens = self._tokenize_into(data, len(data) + 8, add_special, parse_special)
            if count < 0:
                count, tokens = self._tokenize_into(data, -count, add_special, parse_special)
        if count < 0:
            raise TokenizeError(f"tokenization of {len(data)} bytes failed")
        return list(ffi.unpack(tokens, count))

    def _tokenize_into(
        self, data: bytes, capacity: int, add_special: bool, parse_special: bool
    ) -> tuple[int, Any]:
        """One guarded ``llama_tokenize`` call: (count or -needed, token buffer); inside the gate."""
        tokens = ffi.new("llama_token[]", capacity)
        error = ffi.new("char **")
        count = lib.lcpp_tokenize(
            self.handle, data, len(data), tokens, capacity, add_special, parse_special, error
        )
        message = take_message(error)
        if message:
            raise TokenizeError(f"llama.cpp could not tokenize {len(data)} bytes: {message}")
        return count, tokens

    def check_tokens(self, tokens: Sequence[int]) -> None:
        """Raise ``TokenizeError`` if any token id is outside the vocabulary."""
        bad = [t for t in tokens if not 0 <= t < self.n_tokens]
        if bad:
            raise TokenizeError(
                f"token ids {bad[:5]} are outside the vocabulary (valid: 0..{self.n_tokens - 1})"
            )

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The raw bytes of one token (may be part of a multi-byte character)."""
        self.check_tokens((token,))
        with self._gate:
            handle = self.handle
            n = lib.llama_token_to_piece(handle, token, self._piece_buf, len(self._piece_buf), 0, special)
            if n < 0:
                buf = ffi.new("char[]", -n)
                n = lib.llama_token_to_piece(handle, token, buf, -n, 0, special)
                return bytes(ffi.buffer(buf, n))
            return bytes(ffi.buffer(self._piece_buf, n))

    def detokenize_bytes(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """Turn token ids back into raw bytes (``special`` renders special tokens as text)."""
        self.check_tokens(tokens)
        if not tokens:
            return b""
        arr = ffi.new("llama_token[]", list(tokens))
        capacity = len(tokens) * 8 + 16
        buf = ffi.new("char[]", capacity)
        with self._gate:
            handle = self.handle
            n = lib.llama_detokenize(handle, arr, len(tokens), buf, capacity, not special, special)
            if n < 0:
                capacity = -n
                buf = ffi.new("char[]", capacity)
                n = lib.llama_detokenize(handle, arr, len(tokens), buf, capacity, not special, special)
        return bytes(ffi.buffer(buf, n))

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        """Turn token ids back into text (invalid UTF-8 is replaced)."""
        return self.detokenize_bytes(tokens, special).decode("utf-8", "replace")

    def token_text(self, token: int) -> str:
        """The vocabulary's stored text for ``token`` (for special tokens, their name)."""
        self.check_tokens((token,))
        with self._gate:
            return ffi.string(lib.llama_vocab_get_text(self.handle, token)).decode("utf-8", "replace")
