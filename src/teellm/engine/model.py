"""A compact decoder-only transformer for the Llama family (Llama 2/3.x, Mistral, Qwen2, Qwen3).

One readable file in the spirit of gpt-fast. The numerics follow the reference
Hugging Face implementation step by step (RMSNorm in float32, rotary tables in
float32 cast to the compute dtype, SDPA attention) so that logits match it.

The KV cache is static and preallocated: ``[slots, kv_heads, max_seq, head_dim]`` per
layer. Every batch row names its cache slot and the absolute position of each of its
tokens, so sequences of different lengths run in one forward pass; a boolean mask
keeps each row to its own past.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from teellm.engine import kernels
from teellm.engine.arena import TensorArena
from teellm.engine.config import ModelConfig
from teellm.engine.errors import InvalidModelError, UnsupportedModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Linear:
    """y = x W^T + b over weights used as they are (no copy when the dtype matches).

    ``native``: few-row inputs (decode steps) go to teellm.engine.kernels when it takes
    these weights; everything else to torch.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, *, native: bool = False
    ) -> None:
        self.weight = weight
        self.bias = bias
        usable = native and kernels.usable(weight, bias)
        self._kernel = kernels.Projection(((weight, bias),)) if usable else None

    @property
    def native(self) -> bool:
        """Whether few-row inputs go to the native kernel."""
        return self._kernel is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel is not None and x.numel() <= kernels.MAX_ROWS * x.shape[-1]:
            return self._kernel(x)[0]
        return F.linear(x, self.weight, self.bias)

    @property
    def nbytes(self) -> int:
        b = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.weight.numel() * self.weight.element_size() + b


class Int8Linear(Linear):
    """Weight-only int8 (per output channel scale); activations stay bfloat16."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, arena: TensorArena) -> None:
        q = arena.zeros(tuple(weight.shape), torch.int8)
        scale = arena.zeros((weight.shape[0],), torch.bfloat16)
        step = 256  # rows at a time: the float32 temporaries stay small and are wiped
        for start in range(0, weight.shape[0], step):
            w = weight[start : start + step].float()
            s = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
            q[start : start + step] = torch.round(w / s[:, None]).clamp(-128, 127).to(torch.int8)
            scale[start : start + step] = s
            w.zero_()
        super().__init__(q, None if bias is None else arena.copy_of(bias, torch.bfloat16))
        self.scale = scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.weight, self.scale)
        y = y.reshape(*shape[:-1], y.shape[-1])
        return y if self.bias is None else y + self.bias

    @property
    def nbytes(self) -> int:
        return self.weight.numel() + self.scale.numel() * 2


class PackedLinear(Linear):
    """Weights reordered once into oneDNN's blocked layout (about twice as fast on CPU).

    Several weights sharing an input (q/k/v, gate/up) are fused into one matrix. The
    packed copy lives in memory oneDNN allocates, outside the protected arena: an
    opt-in trade of defence in depth for speed (EngineOptions.pack_weights).
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor | None]) -> None:
        fused = torch.cat(weights) if len(weights) > 1 else weights[0]
        self.sizes = [w.shape[0] for w in weights]
        packed = torch.ops.mkldnn._reorder_linear_weight(fused, 1)
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat(
                [
                    b if b is not None else fused.new_zeros(n)
                    for b, n in zip(biases, self.sizes, strict=True)
                ]
            )
        self._bytes = fused.numel() * fused.element_size()
        if len(weights) > 1:
            fused.zero_()  # the temporary plaintext copy
        super().__init__(packed, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    @property
    def nbytes(self) -> int:
        return self._bytes


class Group:
    """Linears sharing an input (q/k/v, gate/up): one native call for all of them on
    few-row inputs (one pass over their weights, one fork and join), else each alone."""

    def __init__(self, parts: Sequence[Linear]) -> None:
        self.parts = tuple(parts)
        native = all(p.native for p in parts)
        self._kernel = kernels.Projection([(p.weight, p.bias) for p in parts]) if native else None

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self._kernel is not None and x.numel() <= kernels.MAX_ROWS * x.shape[-1]:
            return self._kernel(x)
        return [p(x) for p in self.parts]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalised in float32, cast back, then scaled: the reference's order of rounding.
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def rotary_tables(cfg: ModelConfig, length: int, dtype: torch.dtype) -> torch.Tensor:
    """cos and sin for positions [0, length): shape ``[2, length, head_dim]``."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rope = cfg.rope
    if rope.kind == "llama3":
        low_wavelen = rope.original_max_position / rope.low_freq_factor
        high_wavelen = rope.original_max_position / rope.high_freq_factor
        wavelen = 2 * torch.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    positions = torch.arange(length, dtype=torch.float32)
    if rope.kind == "linear":
        positions = positions / rope.factor
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return torch.stack((emb.cos(), emb.sin())).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass
class Layer:
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    gate: Linear
    up: Linear
    down: Linear
    attn_norm: torch.Tensor
    mlp_norm: torch.Tensor
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    attn_in: Group = field(init=False)
    mlp_in: Group = field(init=False)
    # Packed weights (optional): q|k|v and gate|up fused, o and down reordered.
    qkv: PackedLinear | None = None
    gate_up: PackedLinear | None = None
    o_packed: PackedLinear | None = None
    down_packed: PackedLinear | None = None

    def __post_init__(self) -> None:
        self.attn_in = Group((self.q, self.k, self.v))
        self.mlp_in = Group((self.gate, self.up))


@dataclass
class Batch:
    """One forward pass's inputs, built by the scheduler.

    ``tokens``/``positions``: ``[B, T]``; ``slots``: ``[B]`` cache slot of each row;
    ``slot_range``: ``(first, end)`` when the slots are exactly ``range(first, end)`` so the
    cache can be read as a view; ``kv_len``: how many cache positions to attend over;
    ``masks``: per sliding-window value, a ``[B, 1, T, kv_len]`` boolean mask (True = attend),
    or None when every query attends to all ``kv_len`` keys;
    ``last``: for each row, the index in T whose logits are wanted (None: all of them).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    slot_range: tuple[int, int] | None
    kv_len: int
    masks: dict[int | None, torch.Tensor | None]
    last: torch.Tensor | None


class Transformer:
    """The model: weights, rotary tables and the static KV cache."""

    def __init__(
        self,
        cfg: ModelConfig,
        tensors: Mapping[str, torch.Tensor],
        *,
        precision: str = "bfloat16",
        arena: TensorArena | None = None,
        pack_weights: bool = False,
        native_kernels: bool = True,
    ) -> None:
        if precision not in ("float32", "bfloat16", "int8"):
            raise UnsupportedModelError(f"unsupported precision {precision!r}")
        self.cfg = cfg
        self.precision = precision
        self.dtype = DTYPES.get(precision, torch.bfloat16)
        self.arena = arena or TensorArena(protect=False)
        native = native_kernels and precision == "bfloat16"
        self.native = native and kernels.available()
        self._native_attention = self.native and kernels.attention_usable(cfg.head_dim)
        w = _Weights(tensors, self.dtype, self.arena)
        h, hd = cfg.hidden_size, cfg.head_dim
        q_out, kv_out, inter = cfg.num_heads * hd, cfg.num_kv_heads * hd, cfg.intermediate_size
        self.embed = w.get("model.embed_tokens.weight", (cfg.vocab_size, h))
        self.norm = w.get("model.norm.weight", (h,))
        if cfg.tie_word_embeddings or "lm_head.weight" not in tensors:
            self.lm_head = Linear(self.embed, None, native=native)
        else:
            head = w.get("lm_head.weight", (cfg.vocab_size, h))
            self.lm_head = Linear(head, None, native=native)
        self.layers: list[Layer] = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."

            def lin(name: str, shape: tuple[int, int], p: str = p) -> Linear:
                bias = w.optional(f"{p}{name}.bias", (shape[0],))
                if precision == "int8":
                    raw = w.raw(f"{p}{name}.weight", shape)
                    return Int8Linear(raw, bias, self.arena)
                return Linear(w.get(f"{p}{name}.weight", shape), bias, native=native)

            layer = Layer(
                q=lin("self_attn.q_proj", (q_out, h)),
                k=lin("self_attn.k_proj", (kv_out, h)),
                v=lin("self_attn.v_proj", (kv_out, h)),
                o=lin("self_attn.o_proj", (h, q_out)),
                gate=lin("mlp.gate_proj", (inter, h)),
                up=lin("mlp.up_proj", (inter, h)),
                down=lin("mlp.down_proj", (h, inter)),
                attn_norm=w.get(f"{p}input_layernorm.weight", (h,)),
                mlp_norm=w.get(f"{p}post_attention_layernorm.weight", (h,)),
                q_norm=w.get(f"{p}self_attn.q_norm.weight", (hd,)) if cfg.qk_norm else None,
                k_norm=w.get(f"{p}self_attn.k_norm.weight", (hd,)) if cfg.qk_norm else None,
            )
            if pack_weights and precision != "int8":
                layer.qkv = _pack([layer.q, layer.k, layer.v])
                layer.gate_up = _pack([layer.gate, layer.up])
                layer.o_packed = _pack([layer.o])
                layer.down_packed = _pack([layer.down])
            self.layers.append(layer)
        self.packed = pack_weights and precision != "int8"
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.rope = torch.empty(0)
        self.max_seq = 0

    @property
    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads (embedding rows excluded)."""
        total = self.lm_head.nbytes
        for layer in self.layers:
            parts: list[Linear]
            if layer.qkv and layer.gate_up and layer.o_packed and layer.down_packed:
                parts = [layer.qkv, layer.gate_up, layer.o_packed, layer.down_packed]
            else:
                parts = [layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down]
            total += sum(lin.nbytes for lin in parts)
        return total

    def allocate_cache(self, slots: int, max_seq: int) -> None:
        """Preallocate the KV cache (zeros, so padded rows never read NaN)."""
        cfg = self.cfg
        shape = (slots, cfg.num_kv_heads, max_seq, cfg.head_dim)
        self.k_cache = [self.arena.zeros(shape, self.dtype) for _ in self.layers]
        self.v_cache = [self.arena.zeros(shape, self.dtype) for _ in self.layers]
        self.rope = rotary_tables(cfg, max_seq, self.dtype)
        self.max_seq = max_seq
        self._heads = torch.arange(cfg.num_kv_heads)[None, :, None]

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy a sequence's cached keys/values to another slot (cache compaction)."""
        for k, v in zip(self.k_cache, self.v_cache, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def compile(self) -> None:
        """Use torch.compile (inductor) for the forward pass; shapes are dynamic."""
        self._compiled = torch.compile(self._forward, dynamic=True)

    @torch.inference_mode()
    def forward(self, batch: Batch) -> torch.Tensor:
        """Run the batch, update the cache, return float32 logits (``[B, vocab]``, or
        ``[B, T, vocab]`` when ``batch.last`` is None)."""
        compiled = getattr(self, "_compiled", None)
        forward = compiled if compiled is not None else self._forward
        if batch.tokens.numel() == 1 and self.dtype == torch.bfloat16 and not self.native:
            # One row without the native kernel: oneDNN reorders each plain bf16 weight
            # on every call, while torch's own matrix-vector kernel streams it once
            # (about 2x faster, same result); such steps use the plain weights even
            # when packed ones exist.
            previous = torch._C._get_mkldnn_enabled()
            torch._C._set_mkldnn_enabled(False)
            try:
                return forward(batch)
            finally:
                torch._C._set_mkldnn_enabled(previous)
        return forward(batch)

    def _forward(self, batch: Batch) -> torch.Tensor:
        cfg = self.cfg
        bsz, seqlen = batch.tokens.shape
        x = F.embedding(batch.tokens, self.embed)
        hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        group = nh // nkv
        few_rows = self.native and bsz * seqlen <= kernels.MAX_ROWS
        use_packed = (
            self.packed and not few_rows and (bsz * seqlen > 1 or self.dtype != torch.bfloat16)
        )
        # Decode steps (one token per row) rotate, write the cache and attend with the
        # native kernels, which take each row's position instead of index tensors and a
        # mask; other steps use torch.
        positions = lengths = None
        if seqlen == 1 and self._native_attention:
            positions = batch.positions[:, 0].contiguous()
            lengths = positions + 1
        else:
            cos = self.rope[0][batch.positions].unsqueeze(1)
            sin = self.rope[1][batch.positions].unsqueeze(1)
            write_idx = (batch.slots[:, None, None], self._heads, batch.positions[:, None, :])
            grouped_masks = {
                w: m if m is None or group == 1 or seqlen == 1 else m.repeat(1, 1, group, 1)
                for w, m in batch.masks.items()
            }
        delta = None  # each block's output, added to x by the norm that follows it
        for i, layer in enumerate(self.layers):
            x, h = self._add_norm(x, delta, layer.attn_norm, few_rows)
            o_proj, down_proj = layer.o, layer.down
            if use_packed and layer.qkv and layer.o_packed and layer.down_packed:
                q, k, v = layer.qkv(h).split(layer.qkv.sizes, dim=-1)
                o_proj, down_proj = layer.o_packed, layer.down_packed
            else:
                q, k, v = layer.attn_in(h)
            if layer.q_norm is not None and layer.k_norm is not None:
                q = rms_norm(q.view(bsz, seqlen, nh, hd), layer.q_norm, cfg.rms_norm_eps)
                k = rms_norm(k.view(bsz, seqlen, nkv, hd), layer.k_norm, cfg.rms_norm_eps)
            k_cache, v_cache = self.k_cache[i], self.v_cache[i]
            window = cfg.layer_windows[i]
            if positions is not None and lengths is not None:
                q = kernels.rope_and_cache(
                    q, k, v, self.rope, positions, batch.slots, k_cache, v_cache
                )
                attn = kernels.decode_attention(q, k_cache, v_cache, batch.slots, lengths, window)
            else:
                q = rotate(q.view(bsz, seqlen, nh, hd).transpose(1, 2), cos, sin)
                k = rotate(k.view(bsz, seqlen, nkv, hd).transpose(1, 2), cos, sin)
                k_cache.index_put_(write_idx, k)
                v_cache.index_put_(write_idx, v.view(bsz, seqlen, nkv, hd).transpose(1, 2))
                if batch.slot_range is not None:
                    a, b = batch.slot_range
                    keys = k_cache[a:b, :, : batch.kv_len]
                    values = v_cache[a:b, :, : batch.kv_len]
                else:
                    keys = k_cache[:, :, : batch.kv_len].index_select(0, batch.slots)
                    values = v_cache[:, :, : batch.kv_len].index_select(0, batch.slots)
                # Grouped-query attention: the query heads sharing a KV head become extra
                # query rows of that head ([B, kv_heads, group*T, D]); no repeated
                # keys/values, and CPU SDPA kernels run far faster on this shape than with
                # enable_gqa.
                attn = F.scaled_dot_product_attention(
                    q.reshape(bsz, nkv, group * seqlen, hd),
                    keys,
                    values,
                    attn_mask=grouped_masks[window],
                )
            attn = attn.view(bsz, nh, seqlen, hd)
            o = o_proj(attn.transpose(1, 2).reshape(bsz, seqlen, nh * hd))
            x, h = self._add_norm(x, o, layer.mlp_norm, few_rows)
            if use_packed and layer.gate_up is not None:
                gate, up = layer.gate_up(h).split(layer.gate_up.sizes, dim=-1)
            else:
                gate, up = layer.mlp_in(h)
            act = kernels.silu_mul(gate, up) if few_rows else F.silu(gate) * up
            delta = down_proj(act)
        if batch.last is None:
            _, h = self._add_norm(x, delta, self.norm, few_rows)
        else:
            x = (x if delta is None else x + delta)[torch.arange(bsz), batch.last]
            _, h = self._add_norm(x, None, self.norm, self.native and bsz <= kernels.MAX_ROWS)
        return self.lm_head(h).float()

    def _add_norm(
        self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, native: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x + delta`` (the residual stream) and its RMS norm: one native call on the
        few rows of a decode step, torch otherwise (same rounding points)."""
        if native:
            return kernels.rms_norm(x, weight, self.cfg.rms_norm_eps, residual=delta)
        if delta is not None:
            x = x + delta
        return x, rms_norm(x, weight, self.cfg.rms_norm_eps)

    @torch.inference_mode()
    def forward_all(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[T, vocab]`` for every position of one fresh sequence in slot 0."""
        seqlen = tokens.shape[-1]
        positions = torch.arange(seqlen)[None, :]
        causal = positions <= positions.T
        masks: dict[int | None, torch.Tensor | None] = {}
        for window in set(self.cfg.layer_windows):
            m = causal if window is None else causal & (positions.T - positions < window)
            masks[window] = m[None, None]
        batch = Batch(
            tokens=tokens.view(1, -1),
            positions=positions,
            slots=torch.zeros(1, dtype=torch.long),
            slot_range=(0, 1),
            kv_len=seqlen,
            masks=masks,
            last=None,
        )
        return self.forward(batch)[0]


def _pack(parts: list[Linear]) -> PackedLinear:
    return PackedLinear([p.weight for p in parts], [p.bias for p in parts])


class _Weights:
    """Checked access to the checkpoint's tensors.

    A tensor already in the compute dtype is used as it is (zero-copy); a conversion is
    written into the arena (protected memory), never into ordinary memory.
    """

    def __init__(
        self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype, arena: TensorArena
    ) -> None:
        self.tensors = tensors
        self.dtype = dtype
        self.arena = arena

    def raw(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.tensors:
            raise InvalidModelError(f"weight {name} is missing")
        t = self.tensors[name]
        if tuple(t.shape) != shape:
            raise InvalidModelError(f"weight {name} has shape {tuple(t.shape)}, expected {shape}")
        if not t.is_floating_point():
            raise InvalidModelError(f"weight {name} is not a floating-point tensor")
        return t

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        t = self.raw(name, shape)
        return t if t.dtype == self.dtype else self.arena.copy_of(t, self.dtype)

    def optional(self, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        return self.get(name, shape) if name in self.tensors else None
