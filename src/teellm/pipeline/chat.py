"""Chat templates: the model's Jinja template rendered the way Hugging Face renders it.

Same environment options (trim_blocks, lstrip_blocks, loop controls), same globals
(``raise_exception``, ``strftime_now``), same ``tojson`` filter, in a sandbox so a
template shipped with a model cannot reach Python internals.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from teellm.engine.errors import InvalidModelError, InvalidRequestError
from teellm.pipeline.text import normalize_text

ROLES = ("system", "user", "assistant", "tool", "developer")


class TemplateRaised(InvalidRequestError):
    """The chat template rejected the conversation (``raise_exception`` was called)."""

    code = "chat_template_rejected"


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training
    masks in Hugging Face); rendering just emits the body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return list(parser.parse_statements(("name:endgeneration",), drop_needle=True))


def _raise_exception(message: str) -> None:
    raise TemplateRaised(f"the chat template rejected the conversation: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=False)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template with the model's BOS/EOS token strings."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols", _GenerationTag],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise InvalidModelError("the model's chat template does not compile") from exc
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool) -> str:
        """Render normalised, validated ``messages`` into the prompt text."""
        clean = validate_messages(messages)
        try:
            return self._template.render(
                messages=clean,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateRaised:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise InvalidRequestError(
                f"the chat template failed on these messages ({type(exc).__name__})"
            ) from exc


def validate_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check roles and contents; NFC-normalise and clean every text part."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise InvalidRequestError("messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"message {i} is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequestError(f"message {i} has an unsupported role")
        content = message.get("content")
        clean = dict(message)
        if isinstance(content, str):
            clean["content"] = normalize_text(content)
        elif isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise InvalidRequestError(f"message {i} has a non-text content part")
                text = part.get("text")
                if not isinstance(text, str):
                    raise InvalidRequestError(f"message {i} has a content part without text")
                parts.append(normalize_text(text))
            # Templates written for plain-string content are the common case.
            clean["content"] = "".join(parts)
        elif content is None and role == "assistant":
            clean["content"] = ""
        else:
            raise InvalidRequestError(f"message {i} has no text content")
        out.append(clean)
    return out
