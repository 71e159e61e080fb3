"""Model configuration and tokenizer files are parsed defensively: typed errors only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teellm.devmodel import make_model_dir
from teellm.engine import Engine, InvalidModelError, ModelSource, UnsupportedModelError
from teellm.engine.config import ModelConfig
from teellm.errors import TeellmError
from teellm.settings import ModelSettings

VALID = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                *VALID,
                "rope_scaling",
                "rope_parameters",
                "head_dim",
                "sliding_window",
                "use_sliding_window",
                "layer_types",
                "eos_token_id",
                "hidden_act",
            ]
        ),
        json_values,
    )
)
def test_fuzzed_config_fields_give_typed_errors(overrides: dict) -> None:
    raw = json.dumps({**VALID, **overrides}).encode()
    try:
        cfg = ModelConfig.from_json(raw)
    except TeellmError as exc:
        assert exc.code in ("invalid_model", "unsupported_model")
        return
    assert cfg.num_heads % cfg.num_kv_heads == 0


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64))
def test_fuzzed_config_bytes_give_typed_errors(raw: bytes) -> None:
    with pytest.raises(TeellmError):
        ModelConfig.from_json(raw)


def test_rope_parameters_and_legacy_rope_scaling_agree() -> None:
    llama3 = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    new = ModelConfig.from_json(
        json.dumps({**VALID, "rope_parameters": {**llama3, "rope_theta": 5e5}}).encode()
    )
    old = ModelConfig.from_json(
        json.dumps({**VALID, "rope_scaling": llama3, "rope_theta": 5e5}).encode()
    )
    assert new.rope == old.rope and new.rope.kind == "llama3" and new.rope.theta == 5e5


def test_eos_ids_merge_config_and_generation_config() -> None:
    cfg = ModelConfig.from_json(
        json.dumps({**VALID, "eos_token_id": 2}).encode(), {"eos_token_id": [2, 7]}
    )
    assert cfg.eos_token_ids == (2, 7)


@pytest.mark.parametrize("mt", ["gpt2", "mixtral", "gemma", None])
def test_unsupported_model_types(mt: str | None) -> None:
    with pytest.raises(UnsupportedModelError, match="supported: LlamaForCausalLM"):
        ModelConfig.from_json(json.dumps({**VALID, "model_type": mt}).encode())


def test_broken_tokenizer_files_are_model_errors(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    (model / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(InvalidModelError, match="tokenizer.json"):
        Engine(ModelSource.from_dir(model), ModelSettings(), model_id="x")
    (model / "tokenizer.json").unlink()
    with pytest.raises(InvalidModelError, match="tokenizer.json"):
        Engine(ModelSource.from_dir(model), ModelSettings(), model_id="x")
    (model / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(InvalidModelError, match="weights"):
        ModelSource.from_dir(model)
