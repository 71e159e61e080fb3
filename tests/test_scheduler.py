"""Continuous batching: concurrency, identity alone vs batched, cancellation, preemption."""

from __future__ import annotations

import asyncio

import pytest

from teellm.devmodel import make_model_dir
from teellm.engine import (
    Delta,
    Engine,
    EngineOptions,
    EngineStoppedError,
    GenerationRequest,
    InputTooLongError,
    ModelSource,
    SamplingParams,
)
from teellm.settings import ModelSettings

PROMPTS = [
    "Hello",
    "The key broker checks the report against a policy before it releases a key.",
    "Numbers: 0 1 2 3",
    "Model weights are encrypted at rest, signed by the publisher and versioned. " * 3,
    "What is the weather like?",
    "def main(): return",
    "A trusted execution environment measures the code it runs and signs a report.",
    "x",
    "The quick brown fox jumps over the lazy dog.",
    "Private inference keeps prompts, outputs and weights sealed from the operator.",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    path = make_model_dir(tmp_path_factory.mktemp("m"), dtype="float32", hidden=64, layers=2)
    return ModelSource.from_dir(path)


def _engine(source: ModelSource, batch: int = 4, **opts: int) -> Engine:
    settings = ModelSettings(precision="float32", batch_size=batch, max_input_length=200)
    return Engine(source, settings, model_id="m", options=EngineOptions(**opts))


def _req(i: int, max_tokens: int = 24, **sampling: object) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens + i % 5, ignore_eos=True, **sampling)
    return GenerationRequest(request_id=str(i), prompt=PROMPTS[i % len(PROMPTS)], sampling=params)


async def _collect(engine: Engine, req: GenerationRequest) -> list[Delta]:
    return [d async for d in engine.stream(req)]


@pytest.fixture(scope="module")
def alone(source: ModelSource) -> list[list[int]]:
    """Greedy outputs of every prompt, each run alone."""
    with _engine(source, batch=1) as engine:
        return [engine.generate(_req(i)).token_ids for i in range(len(PROMPTS))]


async def test_greedy_identical_alone_and_in_busy_batch(
    source: ModelSource, alone: list[list[int]]
) -> None:
    # Small prefill chunks force long prompts to be split and mixed with decoding.
    with _engine(source, batch=4, prefill_chunk=16) as engine:
        results = await asyncio.gather(*[_collect(engine, _req(i)) for i in range(10)])
        assert engine.stats.max_batch == 4
        assert engine.stats.prefill_steps > 10
    for i, deltas in enumerate(results):
        ids = [t for d in deltas for t in d.token_ids]
        assert ids == alone[i], f"request {i} differs"
        last = deltas[-1]
        assert last.finish_reason == "length" and last.usage is not None
        assert last.usage.completion_tokens == len(ids) == 24 + i % 5
        assert all(d.finish_reason is None for d in deltas[:-1])


async def test_preemption_by_recompute_keeps_outputs(
    source: ModelSource, alone: list[list[int]]
) -> None:
    with _engine(source, batch=4, kv_budget_tokens=90) as engine:
        results = await asyncio.gather(*[_collect(engine, _req(i)) for i in range(6)])
        assert engine.stats.preemptions > 0
    for i, deltas in enumerate(results):
        assert [t for d in deltas for t in d.token_ids] == alone[i]


async def test_same_seed_same_sample_alone_or_batched(source: ModelSource) -> None:
    sampling = {"temperature": 0.9, "top_p": 0.9, "top_k": 40, "seed": 1234}
    with _engine(source, batch=1) as engine:
        solo = engine.generate(_req(1, **sampling)).token_ids
    with _engine(source, batch=4) as engine:
        others = [_collect(engine, _req(i, temperature=1.0)) for i in (0, 2, 3)]
        batched, *_ = await asyncio.gather(_collect(engine, _req(1, **sampling)), *others)
    assert [t for d in batched for t in d.token_ids] == solo
    with _engine(source, batch=1) as engine:
        other_seed = engine.generate(_req(1, **{**sampling, "seed": 99})).token_ids
    assert other_seed != solo


async def test_cancellation_mid_stream_frees_the_slot(
    source: ModelSource, alone: list[list[int]]
) -> None:
    with _engine(source, batch=2) as engine:
        long = _req(3, max_tokens=150)
        stream = engine.stream(long)
        seen = 0
        other = asyncio.create_task(_collect(engine, _req(0)))
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()
        deltas = await other
        assert [t for d in deltas for t in d.token_ids] == alone[0]
        for _ in range(200):
            if engine.scheduler.load() == (0, 0):
                break
            await asyncio.sleep(0.01)
        assert engine.scheduler.load() == (0, 0)
        assert engine.stats.finished == 2  # the cancelled one finished as "cancelled"


async def test_cancelled_task_cancels_request(source: ModelSource) -> None:
    with _engine(source, batch=2) as engine:
        task = asyncio.create_task(_collect(engine, _req(1, max_tokens=180)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if engine.scheduler.load() == (0, 0):
                break
            await asyncio.sleep(0.01)
        assert engine.scheduler.load() == (0, 0)


async def test_backpressure_pauses_a_slow_reader(source: ModelSource) -> None:
    with _engine(source, batch=2, max_backlog=3) as engine:
        slow = engine.stream(_req(1, max_tokens=100))
        first = await slow.__anext__()
        assert first.token_ids
        # Another request runs to completion while the slow reader reads nothing.
        await _collect(engine, _req(2, max_tokens=40))
        for _ in range(200):  # the finished one leaves at the end of its step
            if engine.scheduler.load()[0] == 1:
                break
            await asyncio.sleep(0.01)
        (seq,) = engine.scheduler._active
        assert seq.generated <= 3 + 3  # paused near the backlog limit, not at 100
        rest = [d async for d in slow]
        assert rest[-1].finish_reason == "length"
        assert sum(len(d.token_ids) for d in [first, *rest]) == 101


async def test_stop_string_trims_and_finishes(source: ModelSource) -> None:
    with _engine(source, batch=2) as engine:
        full = engine.generate(_req(4, max_tokens=40)).text
        # A 4-character piece that first occurs at or after position 10.
        start = next(i for i in range(10, len(full) - 4) if full[i : i + 4] not in full[: i + 3])
        stop = full[start : start + 4]
        deltas = await _collect(engine, _req(4, max_tokens=40, stop=["@@never", stop]))
    assert deltas[-1].finish_reason == "stop"
    assert "".join(d.text for d in deltas) == full[: full.index(stop)]


def test_input_too_long_is_typed(source: ModelSource) -> None:
    with _engine(source) as engine:
        req = GenerationRequest(request_id="x", prompt="word " * 400)
        with pytest.raises(InputTooLongError) as info:
            engine.generate(req)
        assert info.value.code == "context_length_exceeded"
        assert info.value.limit == 200 and info.value.length > 200
        assert str(info.value.length) in str(info.value)
        assert engine.count_prompt_tokens(_req(0)) == len(engine.prompt_ids(_req(0)))
        assert engine.count_prompt_tokens(req) == info.value.length  # counts, never raises


async def test_stop_fails_in_flight_requests(source: ModelSource) -> None:
    engine = _engine(source, batch=1).start()
    task = asyncio.create_task(_collect(engine, _req(3, max_tokens=180)))
    await asyncio.sleep(0.05)
    await asyncio.to_thread(engine.stop)
    with pytest.raises(EngineStoppedError):
        await task
    with pytest.raises(EngineStoppedError):
        engine.generate(_req(0))


async def test_long_prompt_is_chunked_and_does_not_stall_decoding(source: ModelSource) -> None:
    events: list[str] = []

    async def run(name: str, req: GenerationRequest) -> None:
        async for d in engine.stream(req):
            if d.token_ids:
                events.append(name)

    with _engine(source, batch=2, prefill_chunk=16) as engine:
        short = asyncio.create_task(run("a", _req(0, max_tokens=80)))
        while events.count("a") < 2:
            await asyncio.sleep(0.001)
        long_req = _req(3, max_tokens=4)  # the longest prompt: several 16-token chunks
        chunks = -(-engine.count_prompt_tokens(long_req) // 16)
        assert chunks >= 4
        long = asyncio.create_task(run("b", long_req))
        await asyncio.gather(short, long)
    before_b = events[events.index("a", 2) : events.index("b")]
    # One prefill chunk and one decode step per iteration: "a" kept decoding meanwhile.
    assert before_b.count("a") >= chunks - 1


@pytest.mark.timeout(60)
def test_request_of_a_closed_event_loop_is_dropped(source: ModelSource) -> None:
    with _engine(source, batch=1, max_backlog=2) as engine:

        async def start_and_abandon() -> None:
            stream = engine.stream(_req(1, max_tokens=150))
            await stream.__anext__()  # submitted; the loop then closes with it unread

        loop = asyncio.new_event_loop()
        loop.run_until_complete(start_and_abandon())
        loop.close()
        # The slot must come free for the next request (batch size 1).
        assert len(engine.generate(_req(0, max_tokens=5)).token_ids) == 5
        assert engine.scheduler.load() == (0, 0)
