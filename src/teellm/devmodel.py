"""A tiny random Llama-family model directory for development, tests and the demo.

The directory looks exactly like one downloaded from the Hugging Face hub:
config.json, generation_config.json, tokenizer.json (a real byte-level BPE trained
on a short embedded text), tokenizer_config.json with a chat template, and one
``model.safetensors`` or several shards plus ``model.safetensors.index.json``.
The weights are random, so the text it generates is gibberish, but every code path
(tokenizer, chat template, attention with grouped KV heads, sharded loading) is real.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, START_HEADER, END_HEADER, EOT]

# Llama-3 style: the template writes the BOS token itself (apply_chat_template
# tokenizes without special tokens), a plain encode gets BOS from the post-processor.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

_TRAINING_TEXT = """\
Private inference keeps prompts, outputs and weights sealed from the operator.
A trusted execution environment measures the code it runs and signs a report.
The key broker checks the report against a policy before it releases a key.
Model weights are encrypted at rest, signed by the publisher and versioned.
The server streams tokens back, sealed to a key only the client holds.
Hello world! How are you today? I am fine, thank you. What is the weather like?
The quick brown fox jumps over the lazy dog. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 2026.
Questions and answers, lists and code: def main(): return {"ok": true}; x = [1, 2, 3].
"""


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on the embedded text (deterministic, well under a second)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT.splitlines() * 4, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def _weights(
    *,
    vocab: int,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    intermediate: int,
    dtype: torch.dtype,
    seed: int,
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).to(dtype)

    def norm() -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)

    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": rand(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = norm()
        out[p + "self_attn.q_proj.weight"] = rand(heads * head_dim, hidden)
        out[p + "self_attn.k_proj.weight"] = rand(kv_heads * head_dim, hidden)
        out[p + "self_attn.v_proj.weight"] = rand(kv_heads * head_dim, hidden)
        out[p + "self_attn.o_proj.weight"] = rand(hidden, heads * head_dim)
        out[p + "post_attention_layernorm.weight"] = norm()
        out[p + "mlp.gate_proj.weight"] = rand(intermediate, hidden)
        out[p + "mlp.up_proj.weight"] = rand(intermediate, hidden)
        out[p + "mlp.down_proj.weight"] = rand(hidden, intermediate)
    out["model.norm.weight"] = norm()
    out["lm_head.weight"] = rand(vocab, hidden)
    return out


def _split(names: list[str], tensors: Mapping[str, torch.Tensor], shards: int) -> list[list[str]]:
    """Greedy contiguous split into ``shards`` groups of roughly equal byte size."""
    total = sum(tensors[n].numel() * tensors[n].element_size() for n in names)
    target = total / shards
    groups: list[list[str]] = [[]]
    acc = 0
    for n in names:
        size = tensors[n].numel() * tensors[n].element_size()
        if groups[-1] and acc + size / 2 > target * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(n)
        acc += size
    while len(groups) < shards:  # more shards than tensors would leave empty files
        groups.append([])
    return groups


def make_model_dir(
    out_dir: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    vocab: int = 512,
    dtype: str = "bfloat16",
    seed: int = 0,
    shards: int = 1,
    max_position_embeddings: int = 2048,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a random Llama-style Hugging Face model directory and return its path.

    ``extra_tensors`` are added to the last shard (tests use it to plant a canary).
    """
    if hidden % heads or heads % kv_heads:
        raise ValueError("hidden must divide by heads and heads by kv_heads")
    if shards < 1:
        raise ValueError("shards must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = getattr(torch, dtype)
    head_dim = hidden // heads

    tok = build_tokenizer(vocab)
    if tok.get_vocab_size() > vocab:
        raise ValueError(f"vocab must be at least {tok.get_vocab_size()}")
    tok.save(str(out / "tokenizer.json"))
    bos_id = tok.token_to_id(BOS)
    eos_id = tok.token_to_id(EOS)
    eot_id = tok.token_to_id(EOT)

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "bos_token_id": bos_id,
        "eos_token_id": [eos_id, eot_id],
    }
    _write_json(out / "config.json", config)
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": bos_id, "eos_token_id": [eos_id, eot_id], "do_sample": False},
    )
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOT,
            "pad_token": EOS,
            "model_max_length": max_position_embeddings,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )

    tensors = _weights(
        vocab=vocab,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        dtype=torch_dtype,
        seed=seed,
    )
    if extra_tensors:
        tensors.update({k: v.contiguous() for k, v in extra_tensors.items()})
    names = list(tensors)
    meta = {"format": "pt"}
    if shards == 1:
        save_file(tensors, str(out / "model.safetensors"), metadata=meta)
        return out
    weight_map: dict[str, str] = {}
    groups = _split(names, tensors, shards)
    for i, group in enumerate(groups, start=1):
        fname = f"model-{i:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(out / fname), metadata=meta)
        weight_map.update(dict.fromkeys(group, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(
        out / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
    return out


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
