"""Continuous batching: one background thread re-forms the batch at every step.

Each iteration: cancelled and finished sequences leave (their cache slot is freed at
once), waiting sequences join while there is a free slot and KV budget, then one
forward pass runs a chunk of prefill for the sequences that still have prompt tokens
to process and one forward pass decodes one token for all the others. Long prompts
are split into chunks so decoding never stalls behind them.

Cache slots are kept compact: the running sequences always occupy slots
``0..n-1`` (a leaving sequence's slot is filled by moving the last one), so the decode
batch usually reads the cache as a view, without a gather.

When the live tokens would exceed the KV budget, the most recently admitted sequence is
preempted: its slot is freed and it waits at the head of the queue; when it comes
back its prompt and the tokens generated so far are recomputed (preemption by
recompute). Output already streamed is kept, so the reader sees no difference.

Sequences never share cache entries, so nothing crosses tenants.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from teellm.engine.errors import EngineError, EngineStoppedError
from teellm.engine.model import Batch, Transformer
from teellm.engine.sampling import TokenSampler
from teellm.engine.sinks import Item, Sink, push_many
from teellm.engine.types import Delta, FinishReason, Usage
from teellm.pipeline.detokenize import IncrementalDetokenizer
from teellm.pipeline.stops import StopMatcher

log = logging.getLogger(__name__)


@dataclass
class Sequence:
    """One request inside the scheduler (prompt ids, output so far, cache state)."""

    request_id: str
    tenant: str
    tokens: list[int]
    num_prompt: int
    max_new: int
    sampler: TokenSampler
    detok: IncrementalDetokenizer
    stops: StopMatcher
    sink: Sink
    logprobs: bool = False
    order: int = 0
    kv_len: int = 0
    slot: int | None = None
    cancelled: bool = False
    done: bool = False
    preemptions: int = 0
    eos_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def pending(self) -> int:
        """Tokens whose keys/values are not yet in the cache."""
        return len(self.tokens) - self.kv_len

    def usage(self) -> Usage:
        return Usage(self.num_prompt, self.generated, len(self.tokens))

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class SchedulerStats:
    """Counters (no content) for metrics and tests."""

    steps: int = 0
    prefill_steps: int = 0
    decode_steps: int = 0
    preemptions: int = 0
    max_batch: int = 0
    finished: int = 0


class Scheduler:
    """Owns the model's cache and the thread that runs it."""

    def __init__(
        self,
        model: Transformer,
        *,
        slots: int,
        max_seq: int,
        kv_budget: int,
        prefill_chunk: int,
        max_backlog: int,
    ) -> None:
        self.model = model
        self.slots = slots
        self.max_seq = max_seq
        self.kv_budget = kv_budget
        self.prefill_chunk = prefill_chunk
        self.max_backlog = max_backlog
        # Margin so padded prefill rows can write past a sequence's end harmlessly.
        model.allocate_cache(slots, max_seq + prefill_chunk)
        self.stats = SchedulerStats()
        self._inbox: deque[Sequence] = deque()
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._running = False
        self._thread: threading.Thread | None = None
        self._outbox: list[tuple[Sink, Item]] = []

    # -- control (any thread) -------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="teellm-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._flush()
        for seq in [*self._active, *self._waiting, *self._inbox]:
            if not seq.done:
                seq.done = True
                seq.sink.push(EngineStoppedError("the engine stopped"))
        self._active.clear()
        self._waiting.clear()
        self._inbox.clear()

    @property
    def running(self) -> bool:
        return self._running

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if not self._running:
                raise EngineStoppedError("the engine is not running")
            seq.order = next(self._order)
            self._inbox.append(seq)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def load(self) -> tuple[int, int]:
        """(running, waiting) sequence counts."""
        return len(self._active), len(self._waiting) + len(self._inbox)

    # -- the loop (scheduler thread only) -------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not (self._inbox or self._waiting or self._active):
                    self._cond.wait()
                if not self._running:
                    return
                self._waiting.extend(self._inbox)
                self._inbox.clear()
            try:
                worked = self.step()
            except Exception:
                log.exception("scheduler step failed; failing the running requests")
                self._fail_active()
                worked = True
            finally:
                self._flush()
            if not worked:  # every sequence waits on a slow reader
                with self._cond:
                    self._cond.wait(timeout=0.005)

    def step(self) -> bool:
        """One iteration; returns False when nothing could run."""
        self._drop_cancelled()
        self._admit()
        self._enforce_budget()
        prefill = [s for s in self._active if s.pending > 1]
        worked = False
        if prefill:
            self._run_prefill(prefill)
            self._flush()  # first tokens go out before the decode pass, not after it
            worked = True
        decode = [
            s
            for s in self._active
            if s.pending == 1 and not s.done and s.sink.backlog() <= self.max_backlog
        ]
        if decode:
            self._run(decode, [1] * len(decode))
            self.stats.decode_steps += 1
            worked = True
        self._release_finished()
        if worked:
            self.stats.steps += 1
            self.stats.max_batch = max(self.stats.max_batch, len(self._active))
        return worked

    def _emit(self, seq: Sequence, item: Item) -> None:
        self._outbox.append((seq.sink, item))

    def _flush(self) -> None:
        if self._outbox:
            items, self._outbox = self._outbox, []
            push_many(items)

    def _drop_cancelled(self) -> None:
        for seq in self._active + list(self._waiting):
            if seq.sink.closed:  # the reader's event loop is gone: nobody will read
                seq.cancelled = True
        for seq in [s for s in self._active if s.cancelled and not s.done]:
            self._finish(seq, "cancelled")
        self._release_finished()
        for seq in [s for s in self._waiting if s.cancelled]:
            self._waiting.remove(seq)
            if not seq.done:
                self._finish(seq, "cancelled")

    def _live_tokens(self) -> int:
        return sum(len(s.tokens) for s in self._active)

    def _admit(self) -> None:
        while self._waiting and len(self._active) < self.slots:
            seq = self._waiting[0]
            # Same test as _enforce_budget (every running sequence may grow by one), so a
            # sequence is never admitted only to be preempted in the same step.
            growth = len(self._active) + 1
            if self._active and self._live_tokens() + len(seq.tokens) + growth > self.kv_budget:
                break
            self._waiting.popleft()
            seq.slot = len(self._active)
            seq.kv_len = 0
            self._active.append(seq)

    def _enforce_budget(self) -> None:
        # Each running sequence may grow by one token this step.
        while len(self._active) > 1 and self._live_tokens() + len(self._active) > self.kv_budget:
            victim = max(self._active, key=lambda s: s.order)
            self._remove(victim)
            victim.kv_len = 0
            victim.preemptions += 1
            self.stats.preemptions += 1
            self._waiting.appendleft(victim)

    def _run_prefill(self, seqs: list[Sequence]) -> None:
        budget = self.prefill_chunk
        rows: list[Sequence] = []
        lengths: list[int] = []
        for seq in sorted(seqs, key=lambda s: s.order):
            if budget <= 0:
                break
            n = min(seq.pending, budget)
            budget -= n
            rows.append(seq)
            lengths.append(n)
        self._run(rows, lengths)
        self.stats.prefill_steps += 1

    def _run(self, rows: list[Sequence], lengths: list[int]) -> None:
        """One forward pass over ``rows``, each processing its next ``lengths[i]`` tokens."""
        width = max(lengths)
        starts_list = [s.kv_len for s in rows]
        kv_len = max(k + n for k, n in zip(starts_list, lengths, strict=True))
        if width == 1:
            tokens = torch.tensor([[s.tokens[s.kv_len]] for s in rows])
        else:
            tokens = torch.zeros((len(rows), width), dtype=torch.long)
            for i, (seq, n) in enumerate(zip(rows, lengths, strict=True)):
                tokens[i, :n] = torch.tensor(seq.tokens[seq.kv_len : seq.kv_len + n])
        positions = torch.tensor(starts_list)[:, None] + torch.arange(width)[None, :]
        # One token per row, all at the same position: every row attends to the whole
        # kv_len, so no mask is needed (SDPA is several times faster without one).
        same = width == 1 and len(set(starts_list)) == 1
        masks: dict[int | None, torch.Tensor | None] = {}
        for window in set(self.model.cfg.layer_windows):
            if same and (window is None or kv_len <= window):
                masks[window] = None
                continue
            keys = torch.arange(kv_len)[None, None, :]
            m = keys <= positions[:, :, None]
            if window is not None:
                m &= keys > positions[:, :, None] - window
            masks[window] = m[:, None]
        slot_ids = [s.slot for s in rows]
        first = slot_ids[0]
        assert first is not None
        contiguous = slot_ids == list(range(first, first + len(rows)))
        batch = Batch(
            tokens=tokens,
            positions=positions,
            slots=torch.tensor(slot_ids),
            slot_range=(first, first + len(rows)) if contiguous else None,
            kv_len=kv_len,
            masks=masks,
            last=None if width == 1 else torch.tensor(lengths) - 1,
        )
        logits = self.model.forward(batch)
        if width == 1:
            logits = logits[:, -1]
        for seq, n in zip(rows, lengths, strict=True):
            seq.kv_len += n
        ready = [i for i, s in enumerate(rows) if s.pending == 0]
        if len(ready) == len(rows):
            self._sample(rows, logits)
        else:
            self._sample([rows[i] for i in ready], logits[ready] if ready else logits[:0])

    def _sample(self, rows: list[Sequence], logits: torch.Tensor) -> None:
        if not rows:
            return
        greedy = [i for i, s in enumerate(rows) if s.sampler.plain_greedy and not s.logprobs]
        picks: dict[int, tuple[int, float | None]] = {}
        if greedy:
            ids = torch.argmax(logits[greedy], dim=-1).tolist()
            picks.update({i: (t, None) for i, t in zip(greedy, ids, strict=True)})
        for i, seq in enumerate(rows):
            if i in picks:
                continue
            token, logp = seq.sampler.sample(logits[i])
            picks[i] = (token, float(logp[token]) if seq.logprobs else None)
        for i, seq in enumerate(rows):
            token, logprob = picks[i]
            self._append(seq, token, logprob)

    def _append(self, seq: Sequence, token: int, logprob: float | None) -> None:
        seq.tokens.append(token)
        seq.sampler.observe(token)
        logprobs = [logprob] if logprob is not None else None
        if token in seq.eos_ids and not seq.sampler.params.ignore_eos:
            self._finish(seq, "stop", token_ids=[token], logprobs=logprobs)
            return
        text = seq.stops.feed(seq.detok.add(token))
        if seq.stops.stopped:
            self._finish(seq, "stop", token_ids=[token], text=text, logprobs=logprobs)
        elif seq.generated >= seq.max_new or len(seq.tokens) >= self.max_seq:
            self._finish(seq, "length", token_ids=[token], text=text, logprobs=logprobs)
        else:
            self._emit(seq, Delta(text=text, token_ids=[token], logprobs=logprobs))

    def _finish(
        self,
        seq: Sequence,
        reason: FinishReason,
        *,
        token_ids: Iterable[int] = (),
        text: str = "",
        logprobs: list[float] | None = None,
    ) -> None:
        if reason != "stop" or not seq.stops.stopped:
            text += seq.stops.feed(seq.detok.flush())
            text += seq.stops.flush()
        seq.done = True
        self.stats.finished += 1
        self._emit(
            seq,
            Delta(
                text=text,
                token_ids=list(token_ids),
                finish_reason=reason,
                usage=seq.usage(),
                logprobs=logprobs,
            ),
        )

    def _release_finished(self) -> None:
        for seq in [s for s in self._active if s.done]:
            self._remove(seq)

    def _remove(self, seq: Sequence) -> None:
        """Free ``seq``'s slot, moving the last sequence into it to stay compact."""
        index = self._active.index(seq)
        last = self._active[-1]
        if last is not seq:
            self.model.move_slot(len(self._active) - 1, index, last.kv_len)
            last.slot = index
            self._active[index] = last
        self._active.pop()
        seq.slot = None

    def _fail_active(self) -> None:
        for seq in list(self._active):
            if not seq.done:
                seq.done = True
                self._emit(seq, EngineError("generation failed inside the engine"))
            self._remove(seq)
