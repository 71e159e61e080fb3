"""teellm's engine against Hugging Face transformers on the same random weights.

Measures decode tokens/s and time to first token for 1 and 8 concurrent requests
(64-token prompts, 64 new tokens, greedy) for: teellm's continuous-batching engine,
transformers ``generate`` (static batch) and transformers ``generate_batch`` (its
continuous batching). Prints ratios and the memory-bandwidth roofline of single-request
decoding (weight bytes per token over the measured copy bandwidth).

    python bench/engine.py            # ~200M-parameter Llama-style model, bfloat16
    python bench/engine.py --quick    # tiny model, a smoke run
    python bench/engine.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

FULL = dict(hidden=1024, layers=12, heads=16, kv_heads=4, intermediate=2816, vocab=32000)
T = TypeVar("T")

QUICK = dict(hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256, vocab=2048)


@dataclass
class Run:
    """One measurement: wall time, mean time to first token, tokens generated."""

    wall_s: float
    ttft_s: float
    first_to_last_s: float
    tokens: int
    requests: int

    @property
    def decode_tps(self) -> float:
        """Tokens after the first per second of the decoding phase."""
        return (self.tokens - self.requests) / max(self.first_to_last_s, 1e-9)

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 4),
            "ttft_s": round(self.ttft_s, 4),
            "decode_tokens_per_s": round(self.decode_tps, 2),
            "e2e_tokens_per_s": round(self.tokens / self.wall_s, 2),
        }


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.decode_tps)


def build(dims: dict[str, int], seed: int) -> tuple[Any, Any]:
    """A random Llama-style transformers model (bf16) and a teellm ModelSource over the
    very same tensors (no copy)."""
    import transformers

    from teellm.devmodel import build_tokenizer
    from teellm.engine import ModelSource

    config = transformers.LlamaConfig(
        hidden_size=dims["hidden"],
        num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"],
        num_key_value_heads=dims["kv_heads"],
        intermediate_size=dims["intermediate"],
        vocab_size=dims["vocab"],
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    config_json = {**config.to_dict(), "architectures": ["LlamaForCausalLM"]}
    tokenizer = build_tokenizer(min(1000, dims["vocab"]))
    files = {
        "config.json": json.dumps(config_json).encode(),
        "tokenizer.json": tokenizer.to_str().encode(),
    }
    source = ModelSource(files=files, tensors=dict(hf.state_dict()), name="bench")
    return hf, source


def copy_bandwidth() -> float:
    """Bytes/s of a large memory copy (read + write), best of 5."""
    src = torch.empty(64 * 1024 * 1024, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / min(times)


def isolated(work: Callable[[], T]) -> T:
    """Run ``work`` on a thread that ends with it.

    torch's OpenMP runtime keeps a worker pool for every thread that ran a parallel region
    and stops spinning once the process has more OpenMP threads than CPUs, which slows
    every parallel region on a small machine. Each system under test gets the process's
    only live pool while it runs, as it would in a process of its own: transformers on a
    short-lived thread, teellm on its engine's scheduler thread (a fresh engine per run).
    """
    from teellm.engine.engine import on_short_lived_thread

    return on_short_lived_thread(work)


def run_teellm(engine: Any, prompts: list[list[int]], new_tokens: int) -> Run:
    from teellm.engine import GenerationRequest, SamplingParams

    async def one(i: int, ids: list[int], start: float) -> tuple[float, float, int]:
        req = GenerationRequest(
            request_id=str(i),
            prompt_token_ids=ids,
            sampling=SamplingParams(max_tokens=new_tokens, ignore_eos=True),
        )
        first, count = 0.0, 0
        async for delta in engine.stream(req):
            if not count and delta.token_ids:
                first = time.perf_counter() - start
            count += len(delta.token_ids)
        return first, time.perf_counter() - start, count

    async def main() -> Run:
        start = time.perf_counter()
        results = await asyncio.gather(*[one(i, p, start) for i, p in enumerate(prompts)])
        wall = time.perf_counter() - start
        firsts = [r[0] for r in results]
        return Run(
            wall_s=wall,
            ttft_s=statistics.mean(firsts),
            first_to_last_s=max(r[1] for r in results) - statistics.mean(firsts),
            tokens=sum(r[2] for r in results),
            requests=len(prompts),
        )

    return asyncio.run(main())


def run_generate(hf: Any, prompts: list[list[int]], new_tokens: int) -> Run:
    ids = torch.tensor(prompts)
    kwargs = dict(
        attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0
    )
    with torch.inference_mode():
        t = time.perf_counter()
        hf.generate(ids, max_new_tokens=1, **kwargs)
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=new_tokens, **kwargs)
        wall = time.perf_counter() - t
    tokens = int((out.shape[1] - ids.shape[1]) * ids.shape[0])
    return Run(wall, ttft, wall - ttft, tokens, len(prompts))


def run_generate_batch(hf: Any, prompts: list[list[int]], new_tokens: int) -> Run | None:
    if not hasattr(hf, "generate_batch"):
        return None
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    cb = ContinuousBatchingConfig(
        num_blocks=4 * len(prompts), max_batch_tokens=1024, max_requests_per_batch=len(prompts)
    )
    t = time.perf_counter()
    out = hf.generate_batch(
        prompts, generation_config=config, continuous_batching_config=cb, record_timestamps=True
    )
    wall = time.perf_counter() - t
    firsts = [o.timestamps[0] - o.created_time for o in out.values()]
    lasts = [o.timestamps[-1] - o.created_time for o in out.values()]
    tokens = sum(len(o.generated_tokens) for o in out.values())
    return Run(
        wall, statistics.mean(firsts), max(lasts) - statistics.mean(firsts), tokens, len(prompts)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few tokens")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile")
    parser.add_argument(
        "--variants",
        default="default,torch,packed,int8",
        help="teellm variants: default (zero-copy bf16, native decode kernel), torch (the "
        "same without the native kernel), packed (oneDNN weights), int8",
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-generate-batch", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for both sides (default: torch's)"
    )
    args = parser.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)

    from teellm.engine import Engine, EngineOptions, kernels
    from teellm.engine.config import parameter_count
    from teellm.settings import ModelSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    dims = QUICK if args.quick else FULL
    prompt_len, new_tokens = (16, 8) if args.quick else (64, 64)
    repeats = args.repeats or (1 if args.quick else 3)
    concurrency = (1, 8)
    hf, source = isolated(lambda: build(dims, seed=0))
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, dims["vocab"], (8, prompt_len), generator=gen).tolist()

    def make_engine(variant: str, compile_: bool = False) -> Any:
        precision = "int8" if variant == "int8" else "bfloat16"
        settings = ModelSettings(batch_size=8, precision=precision, max_input_length=256)
        options = EngineOptions(
            max_seq_len=prompt_len + new_tokens + 8,
            compile=compile_,
            pack_weights=variant == "packed",
            native_kernels=variant != "torch",
        )
        engine = Engine(source, settings, model_id="bench", options=options).start()
        run_teellm(engine, prompts[:2], 4)  # warm-up
        return engine

    variants = [v for v in args.variants.split(",") if v]
    bandwidth = isolated(copy_bandwidth)
    weight_bytes: dict[str, int] = {}
    for v in variants:
        with make_engine(v) as engine:
            weight_bytes[v] = engine.model.weight_bytes_per_token
            config = engine.config
    results: dict[str, Any] = {
        "model": {
            "parameters": parameter_count(config),
            "dims": dims,
            "dtype": "bfloat16",
            "prompt_tokens": prompt_len,
            "new_tokens": new_tokens,
        },
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "native_kernels": kernels.available(),
    }
    figures: dict[str, dict[str, Any]] = {}
    isolated(lambda: run_generate(hf, prompts[:1], 2))  # warm-up
    for n in concurrency:
        batch = prompts[:n]
        runs: dict[str, list[Run]] = {}
        for _ in range(repeats):  # interleaved: the machine's load hits all alike
            for v in variants:
                with make_engine(v) as engine:
                    run = run_teellm(engine, batch, new_tokens)
                runs.setdefault(f"teellm_{n}" if v == "default" else f"teellm_{v}_{n}", []).append(
                    run
                )
            runs.setdefault(f"generate_{n}", []).append(
                isolated(lambda b=batch: run_generate(hf, b, new_tokens))
            )
        figures.update({name: best(r).as_dict() for name, r in runs.items()})
    if args.no_generate_batch:
        results["generate_batch"] = "skipped"
    else:
        batch_runs = [
            isolated(lambda: run_generate_batch(hf, prompts[:8], new_tokens))
            for _ in range(repeats)
        ]
        gb_runs = [r for r in batch_runs if r is not None]
        if not gb_runs:
            results["generate_batch"] = "absent in this transformers version"
        else:
            figures["generate_batch_8"] = best(gb_runs).as_dict()
    if args.compile:
        try:
            compiled = make_engine("default", compile_=True)
            for n in concurrency:
                runs = [run_teellm(compiled, prompts[:n], new_tokens) for _ in range(repeats)]
                figures[f"teellm_compiled_{n}"] = best(runs).as_dict()
            compiled.close()
        except Exception as exc:  # inductor needs a working C++ toolchain
            results["compile_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    results["figures"] = figures

    def ratio(a: str, b: str, key: str = "decode_tokens_per_s") -> float | None:
        if a not in figures or b not in figures:
            return None
        return round(figures[a][key] / max(figures[b][key], 1e-9), 2)

    results["roofline"] = {
        "copy_bandwidth_GBps": round(bandwidth / 1e9, 2),
    }
    for v in variants:
        name = "teellm_1" if v == "default" else f"teellm_{v}_1"
        roofline = bandwidth / weight_bytes[v]
        results["roofline"][v] = {
            "weight_bytes_per_token": weight_bytes[v],
            "roofline_tokens_per_s": round(roofline, 2),
            "fraction_single_decode": round(figures[name]["decode_tokens_per_s"] / roofline, 3),
        }
    ratios = {}
    for v in variants:
        tag = "" if v == "default" else f"{v}_"
        for n in concurrency:
            ratios[f"{tag}decode_vs_generate_{n}"] = ratio(f"teellm_{tag}{n}", f"generate_{n}")
            ratios[f"{tag}ttft_generate_over_teellm_{n}"] = ratio(
                f"generate_{n}", f"teellm_{tag}{n}", "ttft_s"
            )
        ratios[f"{tag}decode_vs_generate_batch_8"] = ratio(f"teellm_{tag}8", "generate_batch_8")
        ratios[f"{tag}e2e_vs_generate_batch_8"] = ratio(
            f"teellm_{tag}8", "generate_batch_8", "e2e_tokens_per_s"
        )
    results["ratios"] = ratios
    if args.json:
        print(json.dumps(results))
        return 0
    print(
        f"model: {results['model']['parameters'] / 1e6:.1f}M parameters, bfloat16, "
        f"{prompt_len}-token prompts, {new_tokens} new tokens, greedy, "
        f"{results['threads']} threads, native kernels "
        f"{'on' if results['native_kernels'] else 'unavailable'}"
    )
    print(f"{'system':<22}{'decode tok/s':>14}{'TTFT s':>10}{'e2e tok/s':>12}{'wall s':>10}")
    for name, f in figures.items():
        print(
            f"{name:<22}{f['decode_tokens_per_s']:>14.1f}{f['ttft_s']:>10.3f}"
            f"{f['e2e_tokens_per_s']:>12.1f}{f['wall_s']:>10.2f}"
        )
    for key in ("generate_batch", "compile_error"):
        if key in results:
            print(f"{key}: {results[key]}")
    r = results["roofline"]
    for v in variants:
        rv = r[v]
        print(
            f"roofline ({v}): {rv['weight_bytes_per_token'] / 1e6:.1f} MB of weights per token, "
            f"copy bandwidth {r['copy_bandwidth_GBps']} GB/s -> {rv['roofline_tokens_per_s']} "
            f"tok/s; single-request decode at {100 * rv['fraction_single_decode']:.0f}% of it"
        )
    for name, value in results["ratios"].items():
        print(f"{name}: {value}x" if value is not None else f"{name}: n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())
