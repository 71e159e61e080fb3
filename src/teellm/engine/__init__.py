"""Inference engine: model, tokenizer, KV cache, scheduler, sampling.

``Engine`` serves one Llama-family model (Llama 2/3.x, Mistral, Qwen2, Qwen3) from a
``ModelSource`` (a sealed bundle's protected memory or a plain directory) with
continuous batching and streaming.

Exports are resolved lazily, so ``teellm.engine.errors`` and ``teellm.pipeline`` can be
imported without pulling in torch or the scheduler (and without import cycles).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teellm.engine.engine import Engine, EngineOptions
    from teellm.engine.errors import (
        EngineError,
        EngineStoppedError,
        InputTooLongError,
        InvalidModelError,
        InvalidRequestError,
        UnsupportedModelError,
    )
    from teellm.engine.source import ModelSource
    from teellm.engine.types import (
        Completion,
        Delta,
        FinishReason,
        GenerationRequest,
        SamplingParams,
        Usage,
    )

_EXPORTS = {
    "Engine": "engine",
    "EngineOptions": "engine",
    "EngineError": "errors",
    "EngineStoppedError": "errors",
    "InputTooLongError": "errors",
    "InvalidModelError": "errors",
    "InvalidRequestError": "errors",
    "UnsupportedModelError": "errors",
    "ModelSource": "source",
    "Completion": "types",
    "Delta": "types",
    "FinishReason": "types",
    "GenerationRequest": "types",
    "SamplingParams": "types",
    "Usage": "types",
}

__all__ = [
    "Completion",
    "Delta",
    "Engine",
    "EngineError",
    "EngineOptions",
    "EngineStoppedError",
    "FinishReason",
    "GenerationRequest",
    "InputTooLongError",
    "InvalidModelError",
    "InvalidRequestError",
    "ModelSource",
    "SamplingParams",
    "UnsupportedModelError",
    "Usage",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'teellm.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"teellm.engine.{module}"), name)
    globals()[name] = value
    return value
