"""Fuzzing: manifests, chunk streams, safetensors headers and key files from hostile
hands produce typed errors only, never a crash or a different exception."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teellm.bundle.errors import BundleError, BundleFormatError, KeyFileError
from teellm.bundle.keys import generate_signing_key, parse_content_key
from teellm.bundle.loader import load_bundle
from teellm.bundle.manifest import canonical_json, data_path, parse_manifest, read_manifest
from teellm.bundle.seal import SealResult, seal_model
from teellm.bundle.tensors import tensors_from_buffer

FUZZ = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

_ROOT = Path(tempfile.mkdtemp(prefix="teellm-fuzz-"))
_SK = generate_signing_key()


def _small_model(root: Path) -> Path:
    src = root / "model"
    src.mkdir()
    import torch
    from safetensors.torch import save_file

    save_file(
        {"a": torch.arange(3000, dtype=torch.float32), "b": torch.ones(7, 5)},
        str(src / "model.safetensors"),
    )
    (src / "config.json").write_text('{"model_type": "llama"}')
    return src


_SEALED: SealResult = seal_model(
    _small_model(_ROOT),
    _ROOT / "bundle",
    model_id="fuzz",
    version=1,
    signing_key=_SK,
    chunk_size=4096,
)
_RAW = (_ROOT / "bundle" / "manifest.json").read_bytes()
_BODY: dict[str, Any] = json.loads(_RAW)
_DATA = data_path(_ROOT / "bundle", "model.safetensors").read_bytes()


atexit.register(shutil.rmtree, _ROOT, True)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(st.binary(max_size=2048))
def test_manifest_parser_random_bytes(data: bytes) -> None:
    with pytest.raises(BundleFormatError):
        parse_manifest(data)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(_RAW) - 1), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, len(_RAW)),
)
def test_manifest_parser_mutated_bytes(edits: list[tuple[int, int]], cut: int) -> None:
    raw = bytearray(_RAW)
    for pos, val in edits:
        raw[pos] = val
    raw = raw[:cut] if cut < len(raw) // 2 else raw
    try:
        m = parse_manifest(bytes(raw), _SEALED.manifest.signature)
        m.verify_signature()
    except BundleError:
        return
    assert bytes(raw) == _RAW  # only the untouched manifest may pass


def _paths(body: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(body, dict):
        for k, v in body.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(body, list):
        for i, v in enumerate(body):
            out += _paths(v, (*prefix, i))
    return out


_FIELD_PATHS = _paths(_BODY)


@FUZZ
@given(st.sampled_from(_FIELD_PATHS), json_values, st.booleans())
def test_manifest_parser_structured(path: tuple[Any, ...], value: Any, delete: bool) -> None:
    body = json.loads(_RAW)
    node = body
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    try:
        parse_manifest(canonical_json(body))
    except BundleFormatError:
        return


_LOAD_DIR = _ROOT / "load"
shutil.copytree(_ROOT / "bundle", _LOAD_DIR)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(_DATA) - 1), st.integers(1, 255)), max_size=3),
    st.one_of(st.none(), st.integers(0, len(_DATA))),
    st.binary(max_size=40),
)
def test_chunk_reader_mutations(edits: list[tuple[int, int]], cut: int | None, tail: bytes) -> None:
    data = bytearray(_DATA)
    for pos, xor in edits:
        data[pos] ^= xor
    if cut is not None:
        data = data[:cut]
    data += tail
    data_path(_LOAD_DIR, "model.safetensors").write_bytes(bytes(data))
    try:
        load_bundle(
            _LOAD_DIR,
            content_key=_SEALED.content_key,
            trusted_publishers=[_SK.public_key()],
            workers=2,
        ).close()
    except BundleError:
        return
    assert bytes(data) == _DATA


@FUZZ
@given(st.binary(max_size=600))
def test_safetensors_header_random(data: bytes) -> None:
    try:
        tensors_from_buffer(memoryview(bytearray(data)), "x.safetensors")
    except BundleFormatError:
        return


@FUZZ
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=4), st.binary(max_size=64))
def test_safetensors_header_structured(header: dict[str, Any], payload: bytes) -> None:
    raw = json.dumps(header).encode()
    buf = bytearray(len(raw).to_bytes(8, "little") + raw + payload)
    try:
        tensors_from_buffer(memoryview(buf), "x.safetensors")
    except BundleFormatError:
        return


@FUZZ
@given(
    st.sampled_from(["F32", "BF16", "U8", "I64", "BOOL", "F16", "XX"]),
    st.lists(st.integers(-2, 6), max_size=3),
    st.integers(-3, 100),
    st.integers(-3, 100),
    st.integers(0, 100),
)
def test_safetensors_header_entries(
    dtype: str, shape: list[int], b: int, e: int, size: int
) -> None:
    raw = json.dumps({"t": {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}}).encode()
    pad = (-len(raw)) % 8
    raw += b" " * pad
    buf = bytearray(len(raw).to_bytes(8, "little") + raw + bytes(size))
    try:
        out = tensors_from_buffer(memoryview(buf), "x.safetensors")
    except BundleFormatError:
        return
    t = out["t"]
    assert list(t.shape) == shape and t.numel() * t.element_size() == e - b


@FUZZ
@given(st.binary(max_size=80))
def test_content_key_parser(data: bytes) -> None:
    try:
        key = parse_content_key(data)
    except KeyFileError:
        return
    assert len(key) == 32


def test_fuzz_fixture_bundle_is_valid() -> None:
    # The fuzzers above mutate a bundle that does load when untouched.
    assert read_manifest(_ROOT / "bundle").model_id == "fuzz"
    load_bundle(
        _ROOT / "bundle", content_key=_SEALED.content_key, trusted_publishers=[_SK.public_key()]
    ).close()


@settings(max_examples=15, deadline=None, database=None)
@given(
    st.lists(st.binary(max_size=3 * 4096 + 7), min_size=1, max_size=3),
    st.sampled_from([4096, 8192]),
)
def test_seal_load_round_trip_property(contents: list[bytes], chunk: int) -> None:
    root = Path(tempfile.mkdtemp(dir=_ROOT))
    src = root / "m"
    src.mkdir()
    for i, data in enumerate(contents):
        (src / f"f{i}.bin").write_bytes(data)
    res = seal_model(src, root / "b", model_id="p", version=1, signing_key=_SK, chunk_size=chunk)
    with load_bundle(
        root / "b",
        content_key=res.content_key,
        trusted_publishers=[_SK.public_key()],
        verify_plaintext=True,
    ) as loaded:
        for i, data in enumerate(contents):
            assert bytes(loaded.files[f"f{i}.bin"]) == data
    shutil.rmtree(root)
