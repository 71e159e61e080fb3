"""Incremental detokenisation that never splits a multi-byte character.

Decoding one token at a time is wrong for byte-level and SentencePiece tokenizers
(spaces, merged bytes), so each step decodes a short window ending at the new token and
emits only the text past what the window already produced. A window that ends inside a
UTF-8 character decodes to U+FFFD; then nothing is emitted until the character is whole.
"""

from __future__ import annotations

from teellm.pipeline.tokenizer import TextTokenizer


class IncrementalDetokenizer:
    """Turn a growing list of generated token ids into text deltas."""

    def __init__(self, tokenizer: TextTokenizer, prompt_tail: list[int] | None = None) -> None:
        self._tok = tokenizer
        # A few prompt tokens give the decoder left context (leading-space handling).
        self._ids: list[int] = list(prompt_tail or [])[-4:]
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, token_id: int) -> str:
        """Append one token; return the new complete text (possibly empty)."""
        self._ids.append(token_id)
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        full_text = self._tok.decode(self._ids[self._prefix :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            delta = full_text[len(prefix_text) :]
            self._prefix = self._read
            self._read = len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """At the end, whatever is left (a truncated character becomes U+FFFD)."""
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        full_text = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""
