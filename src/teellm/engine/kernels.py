"""Native kernels for bfloat16 decode steps, over weights and cache used in place.

A decode step multiplies a handful of rows (one per running sequence) by every weight
matrix, attends each row over its own cached keys and values, and does a little
element-wise work per row. The native module (``_bf16.c``, built at install time where
a C compiler with OpenMP is present) does all of it: ``Projection`` reads each weight
row once for all those rows, straight from the protected memory the weights were
decrypted into, with AVX-512 BF16 dot products; ``decode_attention``,
``rope_and_cache``, ``rms_norm`` and ``silu_mul`` replace several torch operations
each. Every output row is computed the same way whatever the batch. Where the module
is missing or the CPU lacks AVX-512 BF16, ``available()`` is False and the model uses
torch.

Everything the native code trusts is checked here first: dtypes, devices, shapes and
contiguity (``Projection`` checks its weights once and keeps them alive, each call
checks the input); the native code itself checks every row's cache slot, position and
length before it reads or writes.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch

_bf16: Any
try:
    _bf16 = importlib.import_module("teellm.engine._bf16")
except ImportError:  # not built here: torch does the work
    _bf16 = None

MAX_ROWS = 16
"""Most rows of x per call (decode batches up to this size; measured faster than torch
at 1, 8 and 16 rows). Prefill and larger batches use torch's blocked products."""

MAX_PARTS = 4


def available() -> bool:
    """Whether the native kernels are built and this CPU runs them."""
    return _bf16 is not None and bool(_bf16.available())


def usable(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a Projection takes this weight (and bias) as they are."""
    ok = (
        available()
        and weight.dtype == torch.bfloat16
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.is_contiguous()
        and weight.numel() > 0
    )
    if bias is not None:
        ok = ok and bias.dtype == torch.bfloat16 and bias.is_contiguous()
        ok = ok and tuple(bias.shape) == (weight.shape[0],)
    return ok


class Projection:
    """One or more weight matrices (with optional biases) applied to the same input.

    The weights are checked once here (the object keeps them alive); each call checks
    only ``x`` and returns ``[x @ w.T + b for w, b in parts]``, computed in one parallel
    pass over every part's rows, for bfloat16 ``x`` of 1 to MAX_ROWS rows (all
    dimensions but the last).
    """

    def __init__(self, parts: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        if _bf16 is None:
            raise RuntimeError("the native bfloat16 kernel is not built in this installation")
        if not 1 <= len(parts) <= MAX_PARTS:
            raise ValueError(f"between 1 and {MAX_PARTS} weight matrices per projection")
        for w, b in parts:
            if not usable(w, b):
                raise ValueError("weights must be contiguous 2-D bfloat16 CPU tensors (bias [N])")
        self.in_features: int = parts[0][0].shape[1]
        if any(w.shape[1] != self.in_features for w, _ in parts):
            raise ValueError("the weight matrices of one projection must share their input")
        self.parts = tuple(parts)
        self.sizes: tuple[int, ...] = tuple(w.shape[0] for w, _ in parts)
        self._spec: tuple[tuple[int, int, int], ...] = tuple(
            (w.data_ptr(), 0 if b is None else b.data_ptr(), w.shape[0]) for w, b in parts
        )

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        k = self.in_features
        if x.dtype != torch.bfloat16 or not x.is_cpu or x.dim() < 1 or x.shape[-1] != k:
            raise ValueError(
                f"x must be a bfloat16 CPU tensor with {k} columns, "
                f"not {x.dtype} {tuple(x.shape)} on {x.device.type}"
            )
        rows = x.numel() // k
        if not 1 <= rows <= MAX_ROWS:
            raise ValueError(f"x has {rows} rows; the kernel takes 1 to {MAX_ROWS}")
        if not x.is_contiguous():
            x = x.contiguous()
        lead = x.shape[:-1]
        outputs = [torch.empty((*lead, n), dtype=torch.bfloat16) for n in self.sizes]
        spec = tuple(
            (w, b, y.data_ptr(), n) for (w, b, n), y in zip(self._spec, outputs, strict=True)
        )
        _bf16.linear(x.data_ptr(), rows, k, spec, torch.get_num_threads())
        return outputs


def attention_usable(head_dim: int) -> bool:
    """Whether ``decode_attention`` takes this head size."""
    return available() and head_dim % 32 == 0 and 32 <= head_dim <= 256


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    lengths: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """Attention of one new token per row over its cached keys and values.

    ``q``: ``[B, H, D]`` bfloat16; caches ``[S, KVH, T, D]`` bfloat16 (query head ``h``
    reads KV head ``h // (H // KVH)``); ``slots``, ``lengths``: int64 ``[B]``. Row ``b``
    attends cache positions ``[max(0, lengths[b] - window), lengths[b])`` of slot
    ``slots[b]`` (all of them when ``window`` is None). Returns ``[B, H, D]`` bfloat16,
    softmax(q k^T / sqrt(D)) v computed in float32.
    """
    if _bf16 is None:
        raise RuntimeError("the native bfloat16 kernel is not built in this installation")
    if q.dim() != 3 or k_cache.dim() != 4 or tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError("q must be [B, H, D] and both caches [S, KVH, T, D]")
    b, h, d = q.shape
    s, kvh, t, dk = k_cache.shape
    if dk != d or h % kvh or not attention_usable(d):
        raise ValueError(f"unsupported attention shape: {h} heads over {kvh}, head size {d}")
    q = q.contiguous()
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if x.dtype != torch.bfloat16 or not x.is_cpu or not x.is_contiguous():
            raise ValueError(f"{name} must be a contiguous bfloat16 CPU tensor")
    for name, x in (("slots", slots), ("lengths", lengths)):
        if x.dtype != torch.int64 or not x.is_cpu or not x.is_contiguous() or x.shape != (b,):
            raise ValueError(f"{name} must be a contiguous int64 CPU tensor of {b} values")
    if window is not None and window < 1:
        raise ValueError("window must be at least 1")
    out = torch.empty((b, h, d), dtype=torch.bfloat16)
    _bf16.attention(
        q.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        slots.data_ptr(),
        lengths.data_ptr(),
        out.data_ptr(),
        b,
        h,
        kvh,
        s,
        t,
        d,
        window or 0,
        d**-0.5,
        torch.get_num_threads(),
    )
    return out


def _check_rows(name: str, x: torch.Tensor, n: int) -> int:
    if x.dtype != torch.bfloat16 or not x.is_cpu or not x.is_contiguous():
        raise ValueError(f"{name} must be a contiguous bfloat16 CPU tensor")
    if x.dim() < 1 or x.shape[-1] != n or x.numel() == 0:
        raise ValueError(f"{name} must have {n} columns, not shape {tuple(x.shape)}")
    return x.numel() // n


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, weight * rms_norm(s))`` with ``s = x + residual`` (or ``x``), rounded to
    bfloat16 where ``weight * F.rms_norm(s.float(), ...).to(bfloat16)`` rounds. For the
    few rows of a decode step (one thread)."""
    if _bf16 is None:
        raise RuntimeError("the native bfloat16 kernel is not built in this installation")
    n = weight.shape[-1]
    if weight.dim() != 1:
        raise ValueError("weight must be 1-D")
    _check_rows("weight", weight, n)
    rows = _check_rows("x", x, n)
    h = torch.empty_like(x)
    if residual is None:
        _bf16.norm(x.data_ptr(), 0, weight.data_ptr(), 0, h.data_ptr(), rows, n, eps)
        return x, h
    if residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, x {tuple(x.shape)}")
    _check_rows("residual", residual, n)
    s = torch.empty_like(x)
    _bf16.norm(
        x.data_ptr(),
        residual.data_ptr(),
        weight.data_ptr(),
        s.data_ptr(),
        h.data_ptr(),
        rows,
        n,
        eps,
    )
    return s, h


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``F.silu(gate) * up`` for bfloat16 tensors of one shape (one thread)."""
    if _bf16 is None:
        raise RuntimeError("the native bfloat16 kernel is not built in this installation")
    if gate.shape != up.shape:
        raise ValueError(f"gate has shape {tuple(gate.shape)}, up {tuple(up.shape)}")
    n = gate.shape[-1] if gate.dim() else 0
    _check_rows("gate", gate, n)
    _check_rows("up", up, n)
    out = torch.empty_like(gate)
    _bf16.silu_mul(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel())
    return out


def rope_and_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rope: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """One decode step's rotary embedding and cache write: ``k`` rotated and ``v`` stored
    at each row's slot and position, ``q`` rotated and returned as ``[B, H, D]``.

    ``q``: ``B * H * D`` values, ``k``/``v``: ``B * KVH * D`` (each contiguous, any
    shape); ``rope``: ``[2, L, D]`` cos/sin tables; ``positions``, ``slots``: int64 ``[B]``;
    caches ``[S, KVH, T, D]``. Rounds like ``x * cos + rotate_half(x) * sin`` in bfloat16.
    """
    if _bf16 is None:
        raise RuntimeError("the native bfloat16 kernel is not built in this installation")
    if k_cache.dim() != 4 or tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError("both caches must be [S, KVH, T, D]")
    n_slots, kvh, t_max, d = k_cache.shape
    b = positions.shape[0] if positions.dim() == 1 else 0
    if b < 1 or rope.dim() != 3 or rope.shape[0] != 2 or rope.shape[2] != d or d % 2:
        raise ValueError("positions must be [B] and rope [2, L, D] with an even D")
    h = q.numel() // (b * d)
    if q.numel() != b * h * d or h < 1 or h % kvh or k.numel() != b * kvh * d:
        raise ValueError(f"q, k and v do not fit {b} rows of {kvh} KV heads of size {d}")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    named = (("q", q), ("k", k), ("v", v), ("rope", rope), ("k_cache", k_cache))
    for name, x in (*named, ("v_cache", v_cache)):
        if x.dtype != torch.bfloat16 or not x.is_cpu or not x.is_contiguous():
            raise ValueError(f"{name} must be a contiguous bfloat16 CPU tensor")
    if v.numel() != k.numel():
        raise ValueError("k and v must have the same size")
    for name, x in (("positions", positions), ("slots", slots)):
        if x.dtype != torch.int64 or not x.is_cpu or not x.is_contiguous() or x.shape != (b,):
            raise ValueError(f"{name} must be a contiguous int64 CPU tensor of {b} values")
    out = torch.empty((b, h, d), dtype=torch.bfloat16)
    _bf16.rope_cache(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        rope[0].data_ptr(),
        rope[1].data_ptr(),
        positions.data_ptr(),
        slots.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        out.data_ptr(),
        b,
        h,
        kvh,
        d,
        n_slots,
        t_max,
        rope.shape[1],
    )
    return out
