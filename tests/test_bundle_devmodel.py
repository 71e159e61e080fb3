"""The development model directory is a faithful Hugging Face Llama checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

from teellm.devmodel import make_model_dir


@pytest.mark.parametrize("shards", [1, 3])
def test_layout_names_and_shapes(tmp_path: Path, shards: int) -> None:
    d = make_model_dir(tmp_path / "m", shards=shards, layers=2, hidden=64, heads=4, kv_heads=2)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    files = sorted(p.name for p in d.glob("*.safetensors"))
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(d / f), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[k] = tuple(fh.get_slice(k).get_shape())
    if shards == 1:
        assert files == ["model.safetensors"]
        assert not (d / "model.safetensors.index.json").exists()
    else:
        assert files == [f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
        index = json.loads((d / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(shapes)
        for name, f in index["weight_map"].items():
            with safe_open(str(d / f), "pt") as fh:
                assert name in fh.keys()  # noqa: SIM118
    h, v, kv = cfg["hidden_size"], cfg["vocab_size"], cfg["num_key_value_heads"]
    hd = cfg["head_dim"]
    assert shapes["model.embed_tokens.weight"] == (v, h)
    assert shapes["lm_head.weight"] == (v, h)
    assert shapes["model.norm.weight"] == (h,)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        assert shapes[p + "self_attn.q_proj.weight"] == (cfg["num_attention_heads"] * hd, h)
        assert shapes[p + "self_attn.k_proj.weight"] == (kv * hd, h)
        assert shapes[p + "mlp.down_proj.weight"] == (h, cfg["intermediate_size"])
    assert len(shapes) == 3 + 9 * cfg["num_hidden_layers"]


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    a = make_model_dir(tmp_path / "a", seed=3)
    b = make_model_dir(tmp_path / "b", seed=3)
    c = make_model_dir(tmp_path / "c", seed=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_tokenizer_and_chat_template(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    text = "Hello world! Ünïcode ✓"
    enc = tok.encode(text)
    assert enc.ids[0] == tok.token_to_id("<|begin_of_text|>")
    assert tok.decode(enc.ids) == text
    assert tok.get_vocab_size() <= json.loads((d / "config.json").read_text())["vocab_size"]
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(d))
    rendered = hf.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    gen = json.loads((d / "generation_config.json").read_text())
    assert tok.token_to_id("<|eot_id|>") in gen["eos_token_id"]


def test_bad_shapes_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_model_dir(tmp_path / "m", hidden=65, heads=4)
    with pytest.raises(ValueError):
        make_model_dir(tmp_path / "m", shards=0)
