"""Typed errors of the inference engine.

Messages name limits, lengths and architectures, never prompt or output text.
"""

from __future__ import annotations

from teellm.errors import TeellmError


class EngineError(TeellmError):
    """Base class of engine errors."""

    code = "engine_error"


class InputTooLongError(EngineError):
    """The prompt has more tokens than ``max_input_length`` allows."""

    code = "context_length_exceeded"

    def __init__(self, limit: int, length: int) -> None:
        super().__init__(
            f"input is {length} tokens long; the maximum input length is {limit} tokens"
        )
        self.limit = limit
        self.length = length


class UnsupportedModelError(EngineError):
    """The checkpoint's architecture or one of its options is not implemented."""

    code = "unsupported_model"


class InvalidModelError(EngineError):
    """The model files are missing, malformed or inconsistent."""

    code = "invalid_model"


class InvalidRequestError(EngineError):
    """A request is malformed (bad messages, bad chat template input, bad parameters)."""

    code = "invalid_request"


class EngineStoppedError(EngineError):
    """The engine is not running or stopped while the request was in flight."""

    code = "engine_stopped"
