"""The Engine API end to end: plain directories, sealed bundles, sampling, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from teellm.bundle.keys import generate_signing_key, write_content_key, write_signing_key
from teellm.bundle.loader import load_bundle
from teellm.bundle.seal import seal_model
from teellm.cli import app
from teellm.devmodel import make_model_dir
from teellm.engine import (
    Engine,
    EngineOptions,
    GenerationRequest,
    InvalidModelError,
    InvalidRequestError,
    ModelSource,
    SamplingParams,
    UnsupportedModelError,
)
from teellm.errors import TeellmError
from teellm.settings import ModelSettings


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("m"), dtype="bfloat16", shards=2)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("b")
    signing = generate_signing_key()
    pub = write_signing_key(root / "publisher.pem", signing)
    result = seal_model(
        model_dir, root / "bundle", model_id="dev-model", version=1, signing_key=signing
    )
    write_content_key(root / "content.key", result.content_key)
    return {
        "bundle": root / "bundle",
        "key": root / "content.key",
        "pub": pub,
    }


def _req(prompt: str = "Hello world", **sampling: object) -> GenerationRequest:
    return GenerationRequest(request_id="r", prompt=prompt, sampling=SamplingParams(**sampling))


def test_bundle_weights_are_used_without_copies(bundle: dict[str, Path], model_dir: Path) -> None:
    from teellm.bundle.keys import load_public_key, read_content_key

    loaded = load_bundle(
        bundle["bundle"],
        content_key=read_content_key(bundle["key"]),
        trusted_publishers=[load_public_key(bundle["pub"])],
    )
    with loaded:
        source = ModelSource.from_bundle(loaded)
        engine = Engine(source, ModelSettings(precision="bfloat16"), model_id="dev-model")
        model = engine.model
        assert model.embed.data_ptr() == loaded.tensors["model.embed_tokens.weight"].data_ptr()
        layer = model.layers[1]
        name = "model.layers.1.mlp.down_proj.weight"
        assert layer.down.weight.data_ptr() == loaded.tensors[name].data_ptr()
        if model.native:  # the native kernel is handed the loader's memory, not a copy
            kernel = layer.attn_in._kernel
            assert kernel is not None
            names = [f"model.layers.1.self_attn.{p}_proj.weight" for p in "qkv"]
            addresses = [w for w, _, _ in kernel._spec]
            assert addresses == [loaded.tensors[n].data_ptr() for n in names]
        with engine:
            sealed = engine.generate(_req(max_tokens=12, ignore_eos=True))
    with Engine(ModelSource.from_dir(model_dir), ModelSettings(), model_id="plain") as plain:
        assert plain.generate(_req(max_tokens=12, ignore_eos=True)).token_ids == sealed.token_ids


def test_usage_logprobs_and_chat(model_dir: Path) -> None:
    with Engine(ModelSource.from_dir(model_dir), ModelSettings(), model_id="m") as engine:
        out = engine.generate(_req(max_tokens=8, ignore_eos=True, logprobs=True))
        assert out.finish_reason == "length"
        assert out.usage.prompt_tokens == len(engine.prompt_ids(_req()))
        assert out.usage.completion_tokens == 8 == len(out.token_ids)
        assert out.logprobs is not None and len(out.logprobs) == 8
        assert all(lp <= 0 and math.isfinite(lp) for lp in out.logprobs)
        chat = GenerationRequest(
            request_id="c",
            messages=[{"role": "user", "content": "Hello"}],
            sampling=SamplingParams(max_tokens=4),
        )
        ids = engine.prompt_ids(chat)
        assert ids[0] == engine.tokenizer.token_id(engine.tokenizer.bos_token)
        assert ids.count(ids[0]) == 1  # the template's BOS only, not a second one
        assert engine.generate(chat).usage.prompt_tokens == len(ids)
        with pytest.raises(InvalidRequestError):
            engine.generate(GenerationRequest(request_id="n"))


def test_penalties_change_greedy_output(model_dir: Path) -> None:
    with Engine(ModelSource.from_dir(model_dir), ModelSettings(), model_id="m") as engine:
        plain = engine.generate(_req(max_tokens=24, ignore_eos=True)).token_ids
        penalised = engine.generate(
            _req(max_tokens=24, ignore_eos=True, repetition_penalty=1.5, frequency_penalty=1.0)
        ).token_ids
        assert len(set(penalised)) >= len(set(plain))
        assert penalised != plain


def test_eos_finishes_with_stop(model_dir: Path) -> None:
    with Engine(ModelSource.from_dir(model_dir), ModelSettings(), model_id="m") as engine:
        first = engine.generate(_req("Hello", max_tokens=6, ignore_eos=True)).token_ids
        # Declare the third greedy token an end-of-sequence token: generation stops there.
        engine.eos_ids = frozenset({first[2]})
        out = engine.generate(_req("Hello", max_tokens=6))
        assert out.finish_reason == "stop"
        assert out.token_ids == first[: first.index(first[2]) + 1]
        assert out.text == engine.tokenizer.decode(out.token_ids[:-1])
        ignored = engine.generate(_req("Hello", max_tokens=6, ignore_eos=True))
        assert ignored.token_ids == first and ignored.finish_reason == "length"


def test_int8_weight_only_runs(model_dir: Path) -> None:
    settings = ModelSettings(precision="int8")
    with Engine(ModelSource.from_dir(model_dir), settings, model_id="m") as engine:
        assert engine.model.layers[0].q.weight.dtype == torch.int8
        out = engine.generate(_req(max_tokens=6, ignore_eos=True))
    assert len(out.token_ids) == 6


def test_unsupported_and_invalid_models(tmp_path: Path, model_dir: Path) -> None:
    bad = make_model_dir(tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(UnsupportedModelError):
        Engine(ModelSource.from_dir(bad), ModelSettings(), model_id="x")
    (bad / "config.json").write_text(json.dumps({**config, "hidden_size": 32}))
    with pytest.raises(InvalidModelError, match="shape"):
        Engine(ModelSource.from_dir(bad), ModelSettings(), model_id="x")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(InvalidModelError):
        Engine(ModelSource.from_dir(bad), ModelSettings(), model_id="x")


def test_cli_generate_json(model_dir: Path) -> None:
    result = CliRunner().invoke(
        app, ["generate", str(model_dir), "--prompt", "Hello", "--max-tokens", "5", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["usage"]["completion_tokens"] == len(out["token_ids"]) <= 5
    assert isinstance(out["text"], str)
    chat = CliRunner().invoke(
        app,
        ["generate", str(model_dir), "-p", "Hi", "--chat", "-n", "4", "-t", "0.7", "--seed", "3"],
    )
    assert chat.exit_code == 0, chat.output


def test_cli_generate_sealed_bundle(bundle: dict[str, Path]) -> None:
    # In a child process: the command hardens the process it runs in.
    args = ["generate", str(bundle["bundle"]), "-p", "Hello", "-n", "4", "--json"]
    missing = CliRunner().invoke(app, args)
    assert missing.exit_code == 2
    cli = [sys.executable, "-m", "teellm.cli", *args]
    full = [*cli, "--key", str(bundle["key"]), "--trusted-publisher", str(bundle["pub"])]
    result = subprocess.run(full, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["usage"]["prompt_tokens"] > 0


def test_kv_cache_and_converted_weights_are_protected_and_wiped(model_dir: Path) -> None:
    from teellm.memory import probe_buffer_protections

    engine = Engine(
        ModelSource.from_dir(model_dir), ModelSettings(precision="float32"), model_id="m"
    )
    converted = engine.model.layers[0].q.weight  # bf16 checkpoint -> float32 copy
    cache = engine.model.k_cache[0]
    with engine:
        engine.generate(_req(max_tokens=4))
        assert converted.abs().sum() > 0 and cache.abs().sum() > 0
        assert engine.arena.protected
        report = probe_buffer_protections()
        assert report.mlock or report.memfd_secret
    assert converted.abs().sum() == 0 and cache.abs().sum() == 0


@pytest.fixture(scope="module")
def idle_engine(model_dir: Path) -> Engine:
    return Engine(ModelSource.from_dir(model_dir), ModelSettings(max_input_length=64), model_id="m")


@settings(max_examples=80, deadline=None)
@given(
    st.one_of(st.text(max_size=300), st.none()),
    st.one_of(st.none(), st.lists(st.integers(-5, 600), max_size=80)),
)
def test_fuzzed_prompts_tokenize_or_raise_typed(
    idle_engine: Engine, prompt: str | None, token_ids: list[int] | None
) -> None:
    req = GenerationRequest(request_id="f", prompt=prompt, prompt_token_ids=token_ids)
    try:
        ids = idle_engine.prompt_ids(req)
    except TeellmError as exc:
        assert exc.code in ("invalid_request", "context_length_exceeded")
        return
    assert 0 < len(ids) <= idle_engine.max_input_length
    assert all(0 <= i < idle_engine.config.vocab_size for i in ids)


def test_packed_weights_generate_the_same_tokens(model_dir: Path) -> None:
    req = _req("The key broker checks the report", max_tokens=12, ignore_eos=True)
    outs = []
    for pack in (False, True):
        options = EngineOptions(pack_weights=pack)
        with Engine(
            ModelSource.from_dir(model_dir), ModelSettings(), model_id="m", options=options
        ) as engine:
            assert engine.model.packed is pack
            outs.append(engine.generate(req).token_ids)
    assert outs[0] == outs[1]


def test_set_up_work_runs_off_the_callers_thread(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller's thread must not run the model's set-up (torch parallel work there
    # would leave an OpenMP pool behind that slows the scheduler thread's passes).
    import threading

    from teellm.engine import engine as engine_module

    seen: list[tuple[str, int]] = []
    real_model, real_scheduler = engine_module.Transformer, engine_module.Scheduler

    def model(*a: object, **k: object) -> object:
        seen.append(("model", threading.get_ident()))
        return real_model(*a, **k)  # type: ignore[arg-type]

    def scheduler(*a: object, **k: object) -> object:
        seen.append(("scheduler", threading.get_ident()))
        return real_scheduler(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_module, "Transformer", model)
    monkeypatch.setattr(engine_module, "Scheduler", scheduler)
    with Engine(ModelSource.from_dir(model_dir), ModelSettings(), model_id="m") as engine:
        assert engine.generate(_req(max_tokens=2, ignore_eos=True)).usage.completion_tokens == 2
    assert [name for name, _ in seen] == ["model", "scheduler"]
    assert all(ident != threading.get_ident() for _, ident in seen)


def test_short_lived_thread_returns_or_raises() -> None:
    import threading

    from teellm.engine.engine import on_short_lived_thread

    assert on_short_lived_thread(lambda: threading.get_ident()) != threading.get_ident()
    with pytest.raises(InvalidModelError, match="bad weights"):
        on_short_lived_thread(lambda: (_ for _ in ()).throw(InvalidModelError("bad weights")))
    assert not [t for t in threading.enumerate() if t.name == "teellm-setup"]
