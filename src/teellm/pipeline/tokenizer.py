"""The model's tokenizer (``tokenizers`` over tokenizer.json) and its special tokens."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from teellm.engine.errors import InvalidModelError, InvalidRequestError
from teellm.pipeline.chat import ChatTemplate

if TYPE_CHECKING:
    from teellm.engine.source import ModelSource


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class TextTokenizer:
    """Encoding, decoding, special tokens and the chat template of one model."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self._tok = tokenizer
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.chat: ChatTemplate | None = None
        if chat_template:
            self.chat = ChatTemplate(
                chat_template, bos_token=bos_token or "", eos_token=eos_token or ""
            )

    @classmethod
    def from_source(cls, source: ModelSource) -> TextTokenizer:
        """Read tokenizer.json, tokenizer_config.json and any separate chat template."""
        raw = source.read("tokenizer.json")
        if raw is None:
            raise InvalidModelError("the model has no tokenizer.json")
        try:
            tok = Tokenizer.from_str(bytes(raw).decode("utf-8"))
        except Exception as exc:  # tokenizers raises a bare Exception on bad input
            raise InvalidModelError("tokenizer.json cannot be parsed") from exc
        config = source.read_json("tokenizer_config.json") or {}
        special = source.read_json("special_tokens_map.json") or {}
        bos = _token_text(config.get("bos_token")) or _token_text(special.get("bos_token"))
        eos = _token_text(config.get("eos_token")) or _token_text(special.get("eos_token"))
        return cls(tok, bos_token=bos, eos_token=eos, chat_template=_chat_template(source, config))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def token_id(self, token: str | None) -> int | None:
        """The id of a token string, or None."""
        if token is None:
            return None
        value = self._tok.token_to_id(token)
        return None if value is None else int(value)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True
    ) -> str:
        """Render the conversation to prompt text (tokenise it without special tokens)."""
        if self.chat is None:
            raise InvalidRequestError("this model has no chat template; send a plain prompt")
        return self.chat.render(messages, add_generation_prompt=add_generation_prompt)


def _chat_template(source: ModelSource, config: dict[str, Any]) -> str | None:
    raw = source.read("chat_template.jinja")
    if raw is not None:
        return bytes(raw).decode("utf-8", errors="replace")
    template: Any = config.get("chat_template")
    if template is None:
        separate = source.read("chat_template.json")
        if separate is not None:
            try:
                template = json.loads(bytes(separate)).get("chat_template")
            except (ValueError, AttributeError) as exc:
                raise InvalidModelError("chat_template.json is not valid") from exc
    if isinstance(template, list):  # named templates: use "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None
