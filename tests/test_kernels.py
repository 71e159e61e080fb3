"""The native few-row bfloat16 kernel: results, batch invariance, checks, model use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from teellm.devmodel import make_model_dir
from teellm.engine import (
    Engine,
    EngineOptions,
    GenerationRequest,
    ModelSource,
    SamplingParams,
    kernels,
)
from teellm.engine.config import ModelConfig
from teellm.engine.model import Batch, Transformer
from teellm.settings import ModelSettings


def _cpu_has_avx512_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(
        line.startswith("flags") and "avx512_bf16" in line.split() for line in text.splitlines()
    )


needs_kernel = pytest.mark.skipif(
    not kernels.available(), reason="the native kernel is not built or this CPU lacks it"
)


def test_kernel_is_built_where_the_cpu_runs_it() -> None:
    # A build that silently lost the kernel would fall back to torch: catch it here.
    if not _cpu_has_avx512_bf16():
        pytest.skip("this CPU lacks AVX-512 BF16: the engine uses torch")
    assert kernels.available()


def _bound(x: torch.Tensor, w: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    # One rounding to bfloat16 (2^-8 relative, with margin) plus float32 accumulation.
    return ref.abs() * 2.0**-8 + 1e-5 * (x.float().abs() @ w.float().abs().T) + 1e-30


@needs_kernel
@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, kernels.MAX_ROWS),
    k=st.integers(1, 300),
    sizes=st.lists(st.integers(1, 70), min_size=1, max_size=kernels.MAX_PARTS),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_float32_reference(m: int, k: int, sizes: list[int], bias: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).bfloat16()
    parts = [
        (
            torch.randn(n, k, generator=gen).bfloat16(),
            torch.randn(n, generator=gen).bfloat16() if bias else None,
        )
        for n in sizes
    ]
    outputs = kernels.Projection(parts)(x)
    for (w, b), y in zip(parts, outputs, strict=True):
        assert y.dtype == torch.bfloat16 and y.shape == (m, w.shape[0])
        ref = F.linear(x.float(), w.float(), None if b is None else b.float())
        assert ((y.float() - ref).abs() <= _bound(x, w, ref)).all()


@needs_kernel
def test_rows_are_computed_the_same_whatever_the_batch_parts_or_threads() -> None:
    gen = torch.Generator().manual_seed(0)
    k = 1000  # not a multiple of 32: the masked tail too
    x = torch.randn(kernels.MAX_ROWS, k, generator=gen).bfloat16()
    parts = [(torch.randn(n, k, generator=gen).bfloat16(), None) for n in (130, 67, 5)]
    together = kernels.Projection(parts)(x)
    for j, (w, b) in enumerate(parts):
        alone = kernels.Projection([(w, b)])
        for rows in (1, 3, 8):
            for start in range(0, kernels.MAX_ROWS, rows):
                got = alone(x[start : start + rows])[0]
                assert torch.equal(got, together[j][start : start + rows])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.Projection(parts)(x)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, together, strict=True))


@needs_kernel
def test_leading_dimensions_and_strided_input() -> None:
    w = torch.randn(48, 64).bfloat16()
    x = torch.randn(2, 3, 128).bfloat16()[..., ::2]  # not contiguous
    y = kernels.Projection([(w, None)])(x)[0]
    assert y.shape == (2, 3, 48)
    assert torch.equal(y, kernels.Projection([(w, None)])(x.contiguous())[0])


@needs_kernel
def test_bad_inputs_get_clear_errors() -> None:
    w = torch.randn(8, 32).bfloat16()
    proj = kernels.Projection([(w, None)])
    with pytest.raises(ValueError, match="bfloat16 CPU tensor with 32 columns"):
        proj(torch.randn(1, 32))
    with pytest.raises(ValueError, match="32 columns"):
        proj(torch.randn(1, 31).bfloat16())
    with pytest.raises(ValueError, match=f"the kernel takes 1 to {kernels.MAX_ROWS}"):
        proj(torch.randn(kernels.MAX_ROWS + 1, 32).bfloat16())
    with pytest.raises(ValueError, match="0 rows"):
        proj(torch.randn(0, 32).bfloat16())
    with pytest.raises(ValueError, match="contiguous 2-D bfloat16"):
        kernels.Projection([(w.T, None)])
    with pytest.raises(ValueError, match="contiguous 2-D bfloat16"):
        kernels.Projection([(w.float(), None)])
    with pytest.raises(ValueError, match="contiguous 2-D bfloat16"):
        kernels.Projection([(w, torch.zeros(7).bfloat16())])
    with pytest.raises(ValueError, match="share their input"):
        kernels.Projection([(w, None), (torch.randn(8, 16).bfloat16(), None)])
    with pytest.raises(ValueError, match="between 1 and"):
        kernels.Projection([(w, None)] * (kernels.MAX_PARTS + 1))


def _attention_reference(
    q: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    slots: torch.Tensor,
    lengths: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    group = q.shape[1] // kc.shape[1]
    rows = []
    for b in range(q.shape[0]):
        hi = int(lengths[b])
        lo = max(0, hi - window) if window else 0
        k = kc[slots[b], :, lo:hi].double().repeat_interleave(group, 0)
        v = vc[slots[b], :, lo:hi].double().repeat_interleave(group, 0)
        scores = (q[b].double()[:, None, :] @ k.transpose(-1, -2))[:, 0] / q.shape[-1] ** 0.5
        rows.append((torch.softmax(scores, -1)[:, None, :] @ v)[:, 0])
    return torch.stack(rows)


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 6),
    kv_heads=st.integers(1, 4),
    group=st.integers(1, 4),
    d=st.sampled_from([32, 64, 96, 128, 256]),
    t=st.integers(1, 80),
    window=st.one_of(st.none(), st.integers(1, 40)),
    seed=st.integers(0, 2**16),
)
def test_decode_attention_matches_reference(
    b: int, kv_heads: int, group: int, d: int, t: int, window: int | None, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_slots = b + 2
    q = torch.randn(b, kv_heads * group, d, generator=gen).bfloat16()
    kc = torch.randn(n_slots, kv_heads, t, d, generator=gen).bfloat16()
    vc = torch.randn(n_slots, kv_heads, t, d, generator=gen).bfloat16()
    slots = torch.randperm(n_slots, generator=gen)[:b].contiguous()
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    out = kernels.decode_attention(q, kc, vc, slots, lengths, window)
    ref = _attention_reference(q, kc, vc, slots, lengths, window)
    # Each output is a convex combination of values: error is the final rounding
    # (2^-8 of at most max |v|) plus float32 softmax error.
    assert (out.double() - ref).abs().max().item() <= vc.abs().max().item() * 2.0**-8 + 1e-3
    for row in range(b):  # a row alone gives the same bits as in the batch
        alone = kernels.decode_attention(
            q[row : row + 1], kc, vc, slots[row : row + 1], lengths[row : row + 1], window
        )
        assert torch.equal(alone[0], out[row])


@needs_kernel
def test_decode_attention_refuses_bad_rows_and_shapes() -> None:
    q = torch.randn(2, 4, 64).bfloat16()
    kc = torch.randn(3, 2, 10, 64).bfloat16()
    slots, lengths = torch.tensor([0, 2]), torch.tensor([1, 10])
    assert kernels.decode_attention(q, kc, kc, slots, lengths, None).shape == (2, 4, 64)
    with pytest.raises(ValueError, match="slot or length is out of range"):
        kernels.decode_attention(q, kc, kc, torch.tensor([0, 3]), lengths, None)
    with pytest.raises(ValueError, match="slot or length is out of range"):
        kernels.decode_attention(q, kc, kc, torch.tensor([-1, 0]), lengths, None)
    with pytest.raises(ValueError, match="slot or length is out of range"):
        kernels.decode_attention(q, kc, kc, slots, torch.tensor([0, 1]), None)
    with pytest.raises(ValueError, match="slot or length is out of range"):
        kernels.decode_attention(q, kc, kc, slots, torch.tensor([1, 11]), None)
    with pytest.raises(ValueError, match="int64"):
        kernels.decode_attention(q, kc, kc, slots.int(), lengths, None)
    with pytest.raises(ValueError, match="int64"):
        kernels.decode_attention(q, kc, kc, slots[:1], lengths, None)
    with pytest.raises(ValueError, match="head size"):
        kernels.decode_attention(q[..., :48], kc[..., :48], kc[..., :48], slots, lengths, None)
    with pytest.raises(ValueError, match="3 heads over 2"):
        kernels.decode_attention(q[:, :3], kc, kc, slots, lengths, None)
    with pytest.raises(ValueError, match="contiguous bfloat16"):
        kernels.decode_attention(q, kc.float(), kc.float(), slots, lengths, None)
    with pytest.raises(ValueError, match="contiguous bfloat16"):
        kernels.decode_attention(q, kc[:, :, :5], kc[:, :, :5], slots, lengths, None)
    with pytest.raises(ValueError, match="window"):
        kernels.decode_attention(q, kc, kc, slots, lengths, 0)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference in units of b's last bfloat16 place."""
    ulp = torch.exp2(torch.floor(torch.log2(b.float().abs().clamp(min=1e-30))) - 7)
    return ((a.float() - b.float()).abs() / ulp).max().item()


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, kernels.MAX_ROWS),
    n=st.integers(1, 300),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_norm_and_gate_match_torch(rows: int, n: int, scale: float, seed: int) -> None:
    from teellm.engine.model import rms_norm

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, 1, n, generator=gen) * scale).bfloat16()
    delta = (torch.randn(rows, 1, n, generator=gen) * scale).bfloat16()
    w = torch.randn(n, generator=gen).bfloat16()
    s, h = kernels.rms_norm(x, w, 1e-5, residual=delta)
    assert torch.equal(s, x + delta)  # one float32 sum, one rounding: exact
    assert _ulps(h, rms_norm(x + delta, w, 1e-5)) <= 1.0
    same, plain = kernels.rms_norm(x, w, 1e-5)
    assert same is x and _ulps(plain, rms_norm(x, w, 1e-5)) <= 1.0
    gate = (torch.randn(rows, n, generator=gen) * scale).bfloat16()
    up = torch.randn(rows, n, generator=gen).bfloat16()
    assert _ulps(kernels.silu_mul(gate, up), F.silu(gate) * up) <= 1.0


@needs_kernel
def test_norm_and_gate_refuse_mismatches() -> None:
    x = torch.randn(2, 8).bfloat16()
    with pytest.raises(ValueError, match="x must have 7 columns"):
        kernels.rms_norm(x, torch.ones(7).bfloat16(), 1e-5)
    with pytest.raises(ValueError, match="contiguous bfloat16"):
        kernels.rms_norm(x.float(), torch.ones(8).bfloat16(), 1e-5)
    with pytest.raises(ValueError, match="residual has shape"):
        kernels.rms_norm(x, torch.ones(8).bfloat16(), 1e-5, residual=x[:1])
    with pytest.raises(ValueError, match="gate has shape"):
        kernels.silu_mul(x, x[:1])
    with pytest.raises(ValueError, match="contiguous bfloat16"):
        kernels.silu_mul(x.T, x.T)


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 5),
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 3),
    d=st.integers(1, 70).map(lambda n: 2 * n),
    seed=st.integers(0, 2**16),
)
def test_rope_and_cache_match_torch(b: int, kv_heads: int, group: int, d: int, seed: int) -> None:
    from teellm.engine.model import rotate

    gen = torch.Generator().manual_seed(seed)
    n_slots, t_max, h = b + 1, 12, kv_heads * group
    q = torch.randn(b, 1, h * d, generator=gen).bfloat16()
    k = torch.randn(b, 1, kv_heads * d, generator=gen).bfloat16()
    v = torch.randn(b, 1, kv_heads * d, generator=gen).bfloat16()
    rope = torch.randn(2, t_max, d, generator=gen).bfloat16()
    positions = torch.randint(0, t_max, (b,), generator=gen)
    slots = torch.randperm(n_slots, generator=gen)[:b].contiguous()
    k_cache = torch.randn(n_slots, kv_heads, t_max, d, generator=gen).bfloat16()
    v_cache = torch.randn(n_slots, kv_heads, t_max, d, generator=gen).bfloat16()
    k_before, v_before = k_cache.clone(), v_cache.clone()
    out = kernels.rope_and_cache(q, k, v, rope, positions, slots, k_cache, v_cache)
    cos, sin = rope[0][positions][:, None, :], rope[1][positions][:, None, :]
    assert torch.equal(out, rotate(q.view(b, h, d), cos, sin))  # same roundings: same bits
    k_rot = rotate(k.view(b, kv_heads, d), cos, sin)
    for row in range(b):
        slot, pos = int(slots[row]), int(positions[row])
        assert torch.equal(k_cache[slot, :, pos], k_rot[row])
        assert torch.equal(v_cache[slot, :, pos], v.view(b, kv_heads, d)[row])
        k_cache[slot, :, pos], v_cache[slot, :, pos] = (
            k_before[slot, :, pos],
            v_before[slot, :, pos],
        )
    assert torch.equal(k_cache, k_before) and torch.equal(v_cache, v_before)  # nothing else


@needs_kernel
def test_rope_and_cache_refuse_rows_out_of_range() -> None:
    q, k = torch.randn(2, 4 * 8).bfloat16(), torch.randn(2, 2 * 8).bfloat16()
    rope = torch.randn(2, 6, 8).bfloat16()
    cache = torch.zeros(3, 2, 10, 8).bfloat16()
    slots, positions = torch.tensor([0, 2]), torch.tensor([0, 5])
    written = cache.clone()
    kernels.rope_and_cache(q, k, k, rope, positions, slots, written, written.clone())
    assert written.any()
    cases = [
        (positions, torch.tensor([0, 3]), "slot or position is out of range"),
        (torch.tensor([0, 6]), slots, "slot or position is out of range"),  # past the table
        (torch.tensor([-1, 0]), slots, "slot or position is out of range"),
        (positions.int(), slots, "int64"),
    ]
    for pos, slot, message in cases:
        with pytest.raises(ValueError, match=message):
            kernels.rope_and_cache(q, k, k, rope, pos, slot, cache, cache.clone())
    with pytest.raises(ValueError, match="do not fit"):
        kernels.rope_and_cache(q[:, :30], k, k, rope, positions, slots, cache, cache.clone())
    with pytest.raises(ValueError, match="even D"):
        odd = torch.zeros(3, 2, 10, 7).bfloat16()
        kernels.rope_and_cache(q, k, k, rope[..., :7], positions, slots, odd, odd.clone())
    assert not cache.any()  # refused calls wrote nothing


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("m"), dtype="bfloat16")


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Head size 32: decode attention and rotary run natively too (16 does not)."""
    root = tmp_path_factory.mktemp("w")
    return make_model_dir(root, dtype="bfloat16", hidden=128, heads=4, kv_heads=2)


@needs_kernel
@pytest.mark.parametrize("which", ["model_dir", "wide_model_dir"])
def test_model_decodes_with_the_kernel_like_torch(
    which: str, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue(which)
    source = ModelSource.from_dir(model_dir)
    cfg = ModelConfig.from_json((model_dir / "config.json").read_bytes(), {})
    assert kernels.attention_usable(cfg.head_dim) == (which == "wide_model_dir")
    native = Transformer(cfg, source.tensors, native_kernels=True)
    plain = Transformer(cfg, source.tensors, native_kernels=False)
    assert native.native and not plain.native
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (4, 12), generator=gen)
    logits = {}
    for name, model in (("native", native), ("plain", plain)):
        model.allocate_cache(4, 32)
        positions = torch.arange(12)[None, :].repeat(4, 1)
        causal = (torch.arange(12)[None, :] <= torch.arange(12)[:, None])[None, None]
        slots = torch.arange(4)
        model.forward(Batch(prompt, positions, slots, (0, 4), 12, {None: causal}, last=None))
        step = Batch(prompt[:, -1:], torch.full((4, 1), 12), slots, (0, 4), 13, {None: None}, None)
        logits[name] = model.forward(step)
    diff = (logits["native"] - logits["plain"]).abs().max().item()
    assert diff < 0.05 * logits["plain"].abs().max().item()
    assert torch.equal(logits["native"].argmax(-1), logits["plain"].argmax(-1))


@needs_kernel
def test_sliding_window_model_decodes_rows_of_different_lengths_like_torch(
    tmp_path: Path,
) -> None:
    # Mistral-style window shorter than the sequences; rows at different positions, so
    # torch's path needs a mask while the kernel takes per-row lengths.
    import json
    import shutil

    root = make_model_dir(tmp_path / "base", dtype="bfloat16", hidden=128, heads=4, kv_heads=2)
    config = json.loads((root / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=5)
    (root / "config.json").write_text(json.dumps(config))
    source = ModelSource.from_dir(root)
    cfg = ModelConfig.from_json((root / "config.json").read_bytes(), {})
    assert cfg.layer_windows[0] == 5 and kernels.attention_usable(cfg.head_dim)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (3, 14), generator=gen)
    starts = torch.tensor([14, 9, 6])  # each row's length so far
    logits = {}
    for native in (True, False):
        model = Transformer(cfg, source.tensors, native_kernels=native)
        model.allocate_cache(3, 32)
        positions = torch.arange(14)[None, :].repeat(3, 1)
        causal = (torch.arange(14)[None, :] <= torch.arange(14)[:, None])[None, None]
        model.forward(Batch(prompt, positions, torch.arange(3), (0, 3), 14, {5: causal}, None))
        keys = torch.arange(15)[None, None, :]
        pos = starts[:, None, None]
        mask = ((keys <= pos) & (keys > pos - 5))[:, None]
        step = Batch(prompt[:, -1:], starts[:, None], torch.arange(3), (0, 3), 15, {5: mask}, None)
        logits[native] = model.forward(step)
    shutil.rmtree(root)
    diff = (logits[True] - logits[False]).abs().max().item()
    assert diff < 0.05 * logits[False].abs().max().item()
    assert torch.equal(logits[True].argmax(-1), logits[False].argmax(-1))


def test_engine_option_turns_the_kernel_off(model_dir: Path) -> None:
    source = ModelSource.from_dir(model_dir)
    options = EngineOptions(native_kernels=False)
    with Engine(source, ModelSettings(), model_id="m", options=options) as off:
        assert not off.model.native
    with Engine(source, ModelSettings(), model_id="m") as on:
        assert on.model.native == kernels.available()
    with Engine(source, ModelSettings(precision="float32"), model_id="m") as fp32:
        assert not fp32.model.native  # the kernel is for bfloat16 weights only
    compiled = EngineOptions(compile=True)  # compiles lazily: building it is cheap
    with Engine(source, ModelSettings(), model_id="m", options=compiled) as engine:
        assert not engine.model.native


@needs_kernel
def test_bf16_greedy_tokens_are_the_same_alone_and_batched(wide_model_dir: Path) -> None:
    # Decode rows go through the native kernels, whose rows never depend on the batch;
    # prompts of different lengths put rows at different positions.
    import asyncio

    prompts = ["a", "Hello there", "The quick brown fox jumps over", "x y z " * 6, "Q?"]

    def request(i: int) -> GenerationRequest:
        params = SamplingParams(max_tokens=12 + 3 * i, ignore_eos=True)
        return GenerationRequest(request_id=str(i), prompt=prompts[i], sampling=params)

    source = ModelSource.from_dir(wide_model_dir)
    with Engine(source, ModelSettings(batch_size=1), model_id="m") as engine:
        assert engine.model.native
        alone = [engine.generate(request(i)).token_ids for i in range(len(prompts))]

    async def together(engine: Engine) -> list[list[int]]:
        async def one(i: int) -> list[int]:
            return [t async for d in engine.stream(request(i)) for t in d.token_ids]

        return list(await asyncio.gather(*[one(i) for i in range(len(prompts))]))

    settings = ModelSettings(batch_size=len(prompts))
    with Engine(source, settings, model_id="m", options=EngineOptions(prefill_chunk=8)) as engine:
        batched = asyncio.run(together(engine))
        assert engine.stats.max_batch > 1
    assert batched == alone


def test_without_the_kernel_the_model_uses_torch(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an installation without a C compiler (or a CPU without AVX-512 BF16) gets.
    monkeypatch.setattr(kernels, "_bf16", None)
    assert not kernels.available()
    w = torch.randn(4, 32).bfloat16()
    assert not kernels.usable(w, None)
    with pytest.raises(RuntimeError, match="not built"):
        kernels.Projection([(w, None)])
    with Engine(ModelSource.from_dir(model_dir), ModelSettings(), model_id="m") as engine:
        assert not engine.model.native
        req = GenerationRequest(
            request_id="r", prompt="Hello", sampling=SamplingParams(max_tokens=3, ignore_eos=True)
        )
        assert len(engine.generate(req).token_ids) == 3
