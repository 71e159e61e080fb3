"""The model hyper-parameters the engine needs, read from a Hugging Face config.json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from teellm.engine.errors import InvalidModelError, UnsupportedModelError

# model_type -> (architecture class name, per-layer q/k RMSNorm, default qkv bias)
SUPPORTED: dict[str, tuple[str, bool, bool]] = {
    "llama": ("LlamaForCausalLM", False, False),
    "mistral": ("MistralForCausalLM", False, False),
    "qwen2": ("Qwen2ForCausalLM", False, True),
    "qwen3": ("Qwen3ForCausalLM", True, False),
}
SUPPORTED_ROPE = ("default", "linear", "llama3")


def supported_text() -> str:
    return ", ".join(f"{arch} ({mt})" for mt, (arch, _, _) in SUPPORTED.items())


@dataclass(frozen=True)
class RopeSettings:
    """Rotary embedding parameters (``rope_parameters`` or legacy ``rope_scaling``)."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only Llama-family hyper-parameters."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeSettings
    tie_word_embeddings: bool
    qk_norm: bool
    # Sliding window per layer (None = full attention).
    layer_windows: tuple[int | None, ...]
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    torch_dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(
        cls, raw: bytes | bytearray | memoryview, generation: Mapping[str, Any] | None = None
    ) -> ModelConfig:
        """Parse config.json bytes; ``generation`` is generation_config.json, if any."""
        try:
            data = json.loads(bytes(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidModelError("config.json is not valid JSON") from exc
        if not isinstance(data, dict):
            raise InvalidModelError("config.json is not a JSON object")
        return cls.from_dict(data, generation or {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], generation: Mapping[str, Any]) -> ModelConfig:
        try:
            return cls._from_dict(data, generation)
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            # Field names only: the values could be anything.
            raise InvalidModelError(
                f"config.json lacks or mistypes a field ({type(exc).__name__})"
            ) from exc

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], generation: Mapping[str, Any]) -> ModelConfig:
        if not isinstance(generation, Mapping):
            generation = {}
        model_type = data.get("model_type")
        archs = data.get("architectures") or []
        if not isinstance(model_type, str) or model_type not in SUPPORTED:
            raise UnsupportedModelError(
                f"unsupported model_type {_short(model_type)} (architectures {_short(archs)}); "
                f"supported: {supported_text()}"
            )
        arch_name, qk_norm, _ = SUPPORTED[model_type]
        if not isinstance(archs, list) or any(a != arch_name for a in archs):
            raise UnsupportedModelError(
                f"unsupported architecture {_short(archs)}; supported: {supported_text()}"
            )
        hidden = int(data["hidden_size"])
        heads = int(data["num_attention_heads"])
        kv_heads = int(data.get("num_key_value_heads") or heads)
        layers = int(data["num_hidden_layers"])
        head_dim = int(data.get("head_dim") or hidden // heads)
        cfg = cls(
            model_type=model_type,
            vocab_size=int(data["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(data["intermediate_size"]),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(data.get("max_position_embeddings", 2048)),
            rope=_rope(data),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            qk_norm=qk_norm,
            layer_windows=_windows(data, model_type, layers),
            eos_token_ids=_eos_ids(data, generation),
            bos_token_id=_opt_int(generation.get("bos_token_id", data.get("bos_token_id"))),
            torch_dtype=data.get("dtype") or data.get("torch_dtype"),
        )
        if min(hidden, heads, kv_heads, layers, head_dim, cfg.vocab_size) <= 0:
            raise InvalidModelError("config.json has a non-positive dimension")
        if any(w is not None and w <= 0 for w in cfg.layer_windows):
            raise InvalidModelError("config.json has a non-positive sliding_window")
        if heads % kv_heads:
            raise InvalidModelError("num_attention_heads is not a multiple of num_key_value_heads")
        if data.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"unsupported hidden_act {_short(data.get('hidden_act'))}")
        if data.get("mlp_bias"):
            raise UnsupportedModelError("mlp_bias=true is not supported")
        return cfg


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _eos_ids(data: Mapping[str, Any], generation: Mapping[str, Any]) -> tuple[int, ...]:
    ids: list[int] = []
    for value in (data.get("eos_token_id"), generation.get("eos_token_id")):
        if value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if int(v) not in ids:
                ids.append(int(v))
    return tuple(ids)


def _rope(data: Mapping[str, Any]) -> RopeSettings:
    params = dict(data.get("rope_parameters") or {})
    legacy = data.get("rope_scaling")
    if isinstance(legacy, dict):
        params = {**legacy, **params}
    theta = float(params.get("rope_theta", data.get("rope_theta", 10000.0)))
    kind = str(params.get("rope_type", params.get("type", "default")))
    if kind not in SUPPORTED_ROPE:
        raise UnsupportedModelError(
            f"unsupported rope type {_short(kind)}; supported: {', '.join(SUPPORTED_ROPE)}"
        )
    return RopeSettings(
        theta=theta,
        kind=kind,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position=int(params.get("original_max_position_embeddings", 8192)),
    )


def _windows(data: Mapping[str, Any], model_type: str, layers: int) -> tuple[int | None, ...]:
    window = data.get("sliding_window")
    if model_type == "mistral":
        return tuple([int(window) if window else None] * layers)
    if model_type in ("qwen2", "qwen3") and data.get("use_sliding_window") and window:
        types = data.get("layer_types") or []
        if len(types) != layers:
            max_window_layers = int(data.get("max_window_layers", layers))
            return tuple(int(window) if i >= max_window_layers else None for i in range(layers))
        return tuple(int(window) if t == "sliding_attention" else None for t in types)
    return tuple([None] * layers)


def parameter_count(cfg: ModelConfig) -> int:
    """Number of weights (for bandwidth estimates)."""
    attn = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = 3 * cfg.hidden_size * cfg.intermediate_size
    emb = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    return cfg.num_layers * (attn + mlp + 2 * cfg.hidden_size) + emb + cfg.hidden_size
