"""Public request/response types of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

FinishReason = Literal["stop", "length", "cancelled"]


class SamplingParams(BaseModel):
    """Per-request decoding parameters (OpenAI meanings; temperature 0 = greedy)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    max_tokens: int = Field(default=256, ge=1)
    stop: list[Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=list, max_length=16
    )
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    logprobs: bool = False
    # Keep generating past end-of-sequence tokens (benchmarks, tests).
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class GenerationRequest(BaseModel):
    """One generation: a plain ``prompt`` or chat ``messages`` (template applied inside)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    tenant: str = "default"
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    # Already tokenised prompt (benchmarks, clients that tokenise themselves).
    prompt_token_ids: list[int] | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    add_generation_prompt: bool = True

    def __repr__(self) -> str:  # never show prompt text
        return f"GenerationRequest(request_id={self.request_id!r}, tenant={self.tenant!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class Usage:
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass
class Delta:
    """A piece of a streamed generation.

    ``text`` never ends inside a multi-byte character; ``usage`` and ``finish_reason``
    come with the last delta. ``logprobs`` (if asked) has one entry per token id.
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: list[float] | None = None

    def __repr__(self) -> str:
        return (
            f"Delta(chars={len(self.text)}, tokens={len(self.token_ids)}, "
            f"finish_reason={self.finish_reason!r})"
        )


@dataclass
class Completion:
    """A whole generation (the blocking API's result)."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage
    logprobs: list[float] | None = field(default=None)

    def __repr__(self) -> str:
        return (
            f"Completion(chars={len(self.text)}, tokens={len(self.token_ids)}, "
            f"finish_reason={self.finish_reason!r})"
        )
