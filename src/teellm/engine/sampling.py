"""Turning a row of logits into the next token, per request."""

from __future__ import annotations

import torch

from teellm.engine.types import SamplingParams


class TokenSampler:
    """One request's sampling state: its seeded generator and penalty counters."""

    def __init__(self, params: SamplingParams, vocab_size: int, seed: int) -> None:
        self.params = params
        self.generator = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        p = params
        self.needs_counts = p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        self.needs_seen = p.repetition_penalty != 1.0
        self.counts = torch.zeros(vocab_size) if self.needs_counts else None
        self.seen = torch.zeros(vocab_size, dtype=torch.bool) if self.needs_seen else None

    @property
    def plain_greedy(self) -> bool:
        """Greedy with no penalties: argmax can run for many rows at once."""
        return self.params.greedy and not (self.needs_counts or self.needs_seen)

    def observe_prompt(self, ids: list[int]) -> None:
        if self.seen is not None and ids:
            self.seen[torch.tensor(ids).clamp(0, self.vocab_size - 1)] = True

    def observe(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True

    def sample(self, logits: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Pick a token from float32 ``logits[vocab]``; return it and the log-probs used."""
        p = self.params
        x = logits
        if self.seen is not None:
            # Hugging Face/CTRL rule: shrink positive logits, grow negative ones.
            pen = torch.where(x > 0, x / p.repetition_penalty, x * p.repetition_penalty)
            x = torch.where(self.seen, pen, x)
        if self.counts is not None:
            x = x - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0)
        if p.greedy:
            return int(torch.argmax(x)), torch.log_softmax(x, dim=-1)
        x = x / p.temperature
        if p.top_k and p.top_k < x.numel():
            kth = torch.topk(x, p.top_k).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_x, order = torch.sort(x, descending=True)
            cum = torch.softmax(sorted_x, dim=-1).cumsum(-1)
            drop = cum - torch.softmax(sorted_x, dim=-1) >= p.top_p  # keep the first over top_p
            sorted_x = sorted_x.masked_fill(drop, float("-inf"))
            x = torch.full_like(x, float("-inf")).scatter(0, order, sorted_x)
        logp = torch.log_softmax(x, dim=-1)
        token = int(torch.multinomial(logp.exp(), 1, generator=self.generator))
        return token, logp
