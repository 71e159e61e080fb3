"""The engine's model against Hugging Face transformers (a reference written elsewhere).

Tiny random models of every supported architecture are built from config with
transformers, saved as safetensors and loaded by teellm: logits must match (float32:
max abs diff < 1e-4; bfloat16: < 0.05 on logits of magnitude ~1, i.e. a few bf16 ulps),
and greedy generation through the full engine (prefill + cached decode) must give the
same 32 tokens as transformers' generate.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers  # imported once for the module (slow import)
from safetensors.torch import load_file

from teellm.devmodel import make_model_dir
from teellm.engine import Engine, GenerationRequest, ModelSource, SamplingParams, kernels
from teellm.engine.config import ModelConfig
from teellm.engine.errors import UnsupportedModelError
from teellm.engine.model import Batch, Transformer
from teellm.settings import ModelSettings

VOCAB = 512
BASE = dict(  # head size 32: bf16 decode steps run the native kernels where present
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    vocab_size=VOCAB,
    max_position_embeddings=256,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
    "rope_theta": 500000.0,
}

CASES = {
    "llama2": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": LLAMA3_ROPE}),
    "llama-tied-mha": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"tie_word_embeddings": True, "num_key_value_heads": 4},
    ),
    "mistral-window": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "qwen2-bias": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3-qknorm": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tok"), vocab=VOCAB)


@pytest.fixture(scope="module", params=sorted(CASES))
def reference(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path
) -> tuple[torch.nn.Module, Path]:
    config_cls, model_cls, extra = CASES[request.param]
    torch.manual_seed(sorted(CASES).index(request.param))
    config = getattr(transformers, config_cls)(**{**BASE, **extra})
    model = getattr(transformers, model_cls)(config).eval()
    out = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return model, out


def _teellm_model(path: Path, precision: str, *, pack: bool = False) -> Transformer:
    cfg = ModelConfig.from_json((path / "config.json").read_bytes())
    tensors = load_file(str(path / "model.safetensors"))
    model = Transformer(cfg, tensors, precision=precision, pack_weights=pack)
    model.allocate_cache(1, 64)
    return model


@pytest.mark.parametrize("pack", [False, True], ids=["plain", "packed"])
def test_float32_logits_match(reference: tuple[torch.nn.Module, Path], pack: bool) -> None:
    hf, path = reference
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits[0].float()
    got = _teellm_model(path, "float32", pack=pack).forward_all(ids[0])
    assert (got - expected).abs().max().item() < 1e-4


def test_bfloat16_logits_close(reference: tuple[torch.nn.Module, Path]) -> None:
    hf, path = reference
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = copy.deepcopy(hf).to(torch.bfloat16)(ids).logits[0].float()
    got = _teellm_model(path, "bfloat16").forward_all(ids[0])
    assert (got - expected).abs().max().item() < 0.05


def test_bfloat16_decode_steps_close(reference: tuple[torch.nn.Module, Path]) -> None:
    # Prefill 16 tokens, then decode 8 one at a time (the native kernels' path where
    # the CPU has them), against transformers' bf16 logits for the whole sequence.
    hf, path = reference
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = copy.deepcopy(hf).to(torch.bfloat16)(ids).logits[0].float()
    model = _teellm_model(path, "bfloat16")
    assert model.native == kernels.available()
    model.forward_all(ids[0, :16])
    keys = torch.arange(64)
    for t in range(16, 24):
        masks: dict[int | None, torch.Tensor | None] = {}
        for window in set(model.cfg.layer_windows):
            visible = keys[: t + 1] <= t
            if window is not None:
                visible &= keys[: t + 1] > t - window
            masks[window] = visible[None, None, None, :]
        step = Batch(
            tokens=ids[:, t : t + 1],
            positions=torch.tensor([[t]]),
            slots=torch.zeros(1, dtype=torch.long),
            slot_range=(0, 1),
            kv_len=t + 1,
            masks=masks,
            last=None,
        )
        got = model.forward(step)[0, 0]
        assert (got - expected[t]).abs().max().item() < 0.05, t


def test_greedy_32_tokens_match_generate(reference: tuple[torch.nn.Module, Path]) -> None:
    hf, path = reference
    settings = ModelSettings(precision="float32", batch_size=2)
    with Engine(ModelSource.from_dir(path), settings, model_id="ref") as engine:
        req = GenerationRequest(
            request_id="r",
            prompt="The key broker checks the report",
            sampling=SamplingParams(max_tokens=32, ignore_eos=True),
        )
        prompt = engine.prompt_ids(req)
        got = engine.generate(req).token_ids
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=32,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=VOCAB - 1,
        )
    assert got == out[0, len(prompt) :].tolist()


def test_unsupported_architecture_names_supported(tmp_path: Path) -> None:
    cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
    with pytest.raises(UnsupportedModelError) as info:
        ModelConfig.from_json(json.dumps(cfg).encode())
    assert info.value.code == "unsupported_model"
    assert "LlamaForCausalLM" in str(info.value) and "Qwen3ForCausalLM" in str(info.value)


def test_unsupported_rope_scaling_is_refused() -> None:
    cfg = {**BASE, "model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    with pytest.raises(UnsupportedModelError, match="rope"):
        ModelConfig.from_json(json.dumps(cfg).encode())
