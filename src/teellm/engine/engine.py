"""The engine: a model, its tokenizer and a continuous-batching scheduler behind one API."""

from __future__ import annotations

import secrets
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from teellm.engine.arena import TensorArena
from teellm.engine.config import ModelConfig
from teellm.engine.errors import (
    EngineStoppedError,
    InputTooLongError,
    InvalidModelError,
    InvalidRequestError,
)
from teellm.engine.model import Transformer
from teellm.engine.sampling import TokenSampler
from teellm.engine.scheduler import Scheduler, SchedulerStats, Sequence
from teellm.engine.sinks import AsyncSink, Sink, ThreadSink
from teellm.engine.source import ModelSource
from teellm.engine.types import Completion, Delta, GenerationRequest, Usage
from teellm.pipeline.detokenize import IncrementalDetokenizer
from teellm.pipeline.stops import StopMatcher
from teellm.pipeline.text import normalize_text
from teellm.pipeline.tokenizer import TextTokenizer
from teellm.settings import ModelSettings

T = TypeVar("T")


@dataclass(frozen=True)
class EngineOptions:
    """Engine tuning beyond ModelSettings.

    ``max_seq_len``: cache length per sequence (prompt + output), default
    ``min(max_position_embeddings, max_input_length + 1024)``; ``kv_budget_tokens``: live
    tokens across running sequences before preemption, default ``batch_size * max_seq_len``;
    ``prefill_chunk``: prompt tokens per prefill forward pass; ``max_backlog``: unread
    deltas after which a request pauses; ``threads``: torch intra-op threads (process-wide);
    ``protect_memory``: KV cache and converted weights in protected memory (memfd_secret or
    mlock), zeroized by ``stop()``; ``compile``: run the forward pass through torch.compile
    (slow first steps); ``pack_weights``: reorder weights once into oneDNN's blocked layout,
    fusing q/k/v and gate/up (faster batched decoding on CPU, but the packed copy is
    ordinary memory outside the protected arena and doubles weight memory; off by default);
    ``native_kernels``: bfloat16 decode steps (up to teellm.engine.kernels.MAX_ROWS rows)
    use the native AVX-512 BF16 kernels (matrix products over the weights in place,
    attention, norms, rotary), where they are built and the CPU has them
    (``Engine.model.native`` says whether they are in use); ``compile`` turns them off.
    """

    max_seq_len: int | None = None
    kv_budget_tokens: int | None = None
    prefill_chunk: int = 512
    max_backlog: int = 64
    threads: int | None = None
    protect_memory: bool = True
    compile: bool = False
    pack_weights: bool = False
    native_kernels: bool = True


class Engine:
    """Serve one model with continuous batching.

    ``start()`` launches the scheduler thread; ``stream(req)`` yields deltas (closing the
    iterator cancels the request); ``generate(req)`` blocks for the whole completion.
    """

    def __init__(
        self,
        source: ModelSource,
        settings: ModelSettings,
        *,
        model_id: str,
        options: EngineOptions | None = None,
    ) -> None:
        opts = options or EngineOptions()
        if opts.threads:
            torch.set_num_threads(opts.threads)
        raw_config = source.read("config.json")
        if raw_config is None:
            raise InvalidModelError("the model has no config.json")
        self.config = ModelConfig.from_json(raw_config, source.read_json("generation_config.json"))
        self.tokenizer = TextTokenizer.from_source(source)
        self.arena = TensorArena(protect=opts.protect_memory)
        self.model = on_short_lived_thread(
            lambda: Transformer(
                self.config,
                source.tensors,
                precision=settings.precision,
                arena=self.arena,
                pack_weights=opts.pack_weights,
                # Compiled graphs would break at every native call: one or the other.
                native_kernels=opts.native_kernels and not opts.compile,
            )
        )
        if opts.compile:
            self.model.compile()
        self._closed = False
        self.model_id = model_id
        self.settings = settings
        self.source = source
        max_seq = opts.max_seq_len or min(
            self.config.max_position_embeddings, settings.max_input_length + 1024
        )
        self.max_seq_len = max_seq
        self.max_input_length = min(settings.max_input_length, max_seq - 1)
        eos = set(self.config.eos_token_ids)
        eos_tok = self.tokenizer.token_id(self.tokenizer.eos_token)
        if eos_tok is not None:
            eos.add(eos_tok)
        self.eos_ids = frozenset(eos)
        self.scheduler = on_short_lived_thread(
            lambda: Scheduler(
                self.model,
                slots=settings.batch_size,
                max_seq=max_seq,
                kv_budget=opts.kv_budget_tokens or settings.batch_size * max_seq,
                prefill_chunk=opts.prefill_chunk,
                max_backlog=opts.max_backlog,
            )
        )

    def __repr__(self) -> str:
        return f"Engine(model_id={self.model_id!r}, precision={self.settings.precision!r})"

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> Engine:
        """Start the scheduler thread (an engine cannot start again once stopped)."""
        if self._closed:
            raise EngineStoppedError("this engine was stopped; create a new one")
        self.scheduler.start()
        return self

    def stop(self) -> None:
        """Stop the scheduler, fail requests in flight with EngineStoppedError, then
        zeroize the KV cache and converted weights. Idempotent; final."""
        self._closed = True
        self.scheduler.stop()
        self.arena.close()

    close = stop

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> SchedulerStats:
        return self.scheduler.stats

    # -- preprocessing --------------------------------------------------------
    def prompt_ids(self, req: GenerationRequest, *, enforce_limit: bool = True) -> list[int]:
        """Token ids of the request's prompt, after normalisation and the chat template.

        Raises InputTooLongError past ``max_input_length`` (never truncates) unless
        ``enforce_limit`` is False.
        """
        if req.messages is not None:
            text = self.tokenizer.apply_chat_template(
                req.messages, add_generation_prompt=req.add_generation_prompt
            )
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        elif req.prompt_token_ids is not None:
            ids = list(req.prompt_token_ids)
            if any(not 0 <= i < self.config.vocab_size for i in ids):
                raise InvalidRequestError("prompt_token_ids has an id outside the vocabulary")
        elif req.prompt is not None:
            ids = self.tokenizer.encode(normalize_text(req.prompt), add_special_tokens=True)
        else:
            raise InvalidRequestError("a request needs a prompt, messages or prompt_token_ids")
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        if enforce_limit and len(ids) > self.max_input_length:
            raise InputTooLongError(self.max_input_length, len(ids))
        return ids

    def count_prompt_tokens(self, req: GenerationRequest) -> int:
        """How many tokens the request's prompt is, whatever ``max_input_length`` says
        (compare with it; stream() and generate() raise InputTooLongError past it)."""
        return len(self.prompt_ids(req, enforce_limit=False))

    def _sequence(self, req: GenerationRequest, ids: list[int], sink: Sink) -> Sequence:
        params = req.sampling
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        sampler = TokenSampler(params, self.config.vocab_size, seed)
        sampler.observe_prompt(ids)
        return Sequence(
            request_id=req.request_id,
            tenant=req.tenant,
            tokens=list(ids),
            num_prompt=len(ids),
            max_new=min(params.max_tokens, self.max_seq_len - len(ids)),
            sampler=sampler,
            detok=IncrementalDetokenizer(self.tokenizer, ids),
            stops=StopMatcher(params.stop),
            sink=sink,
            logprobs=params.logprobs,
            eos_ids=self.eos_ids,
        )

    # -- generation -----------------------------------------------------------
    async def stream(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """Submit ``req`` and yield its deltas; the last one has finish_reason and usage.

        Leaving the loop early (break, aclose, task cancellation) cancels the request
        and frees its slot.
        """
        import asyncio

        ids = self.prompt_ids(req)
        sink = AsyncSink(asyncio.get_running_loop())
        seq = self._sequence(req, ids, sink)
        self.scheduler.submit(seq)
        try:
            while True:
                item = await sink.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not seq.done:
                seq.cancel()
                self.scheduler.wake()

    def generate(self, req: GenerationRequest) -> Completion:
        """Run ``req`` to completion (blocking; call from a thread, not an event loop)."""
        ids = self.prompt_ids(req)
        sink = ThreadSink()
        seq = self._sequence(req, ids, sink)
        self.scheduler.submit(seq)
        text: list[str] = []
        token_ids: list[int] = []
        logprobs: list[float] = []
        try:
            while True:
                item = sink.get()
                if isinstance(item, BaseException):
                    raise item
                text.append(item.text)
                token_ids.extend(item.token_ids)
                logprobs.extend(item.logprobs or [])
                if item.finish_reason is not None:
                    usage = item.usage or Usage(len(ids), len(token_ids), len(ids) + len(token_ids))
                    return Completion(
                        text="".join(text),
                        token_ids=token_ids,
                        finish_reason=item.finish_reason,
                        usage=usage,
                        logprobs=logprobs if req.sampling.logprobs else None,
                    )
        finally:
            if not seq.done:
                seq.cancel()
                self.scheduler.wake()


def on_short_lived_thread(work: Callable[[], T]) -> T:
    """Run ``work`` on a thread of its own that ends with it; return its result or raise
    its exception.

    Why: torch's OpenMP runtime (libgomp) keeps a pool of worker threads for every thread
    that has run a parallel region, for as long as that thread lives, and once the
    process holds more OpenMP threads than CPUs it stops spinning between regions, so
    every parallel region waits for futex wake-ups. The engine's parallel work belongs to
    the scheduler thread alone: set-up work (weight conversion, cache and rotary tables)
    on the caller's thread, usually the one serving HTTP, made every later forward pass
    30-50 % slower on a 2-core machine. A pool ends with its thread.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # re-raised on the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="teellm-setup")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
