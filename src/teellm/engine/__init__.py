"""Inference engine: model, tokenizer, KV cache, scheduler, sampling.

``Engine`` serves one Llama-family model (Llama 2/3.x, Mistral, Qwen2, Qwen3) from a
``ModelSource`` (a sealed bundle's protected memory or a plain directory) with
continuous batching and streaming.
"""

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
