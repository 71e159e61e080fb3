"""Sealed bundles: round trip, keys, manifest identity and the content commitment."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from safetensors.torch import load_file

from teellm.bundle import read_manifest, stream
from teellm.bundle.errors import (
    BundleExistsError,
    BundleFormatError,
    ContentCommitmentError,
    KeyFileError,
)
from teellm.bundle.keys import (
    content_key_hex,
    generate_content_key,
    generate_signing_key,
    key_id,
    load_public_key,
    load_signing_key,
    raw_public_key,
    read_content_key,
    write_content_key,
    write_signing_key,
)
from teellm.bundle.loader import load_bundle
from teellm.bundle.manifest import data_path
from teellm.bundle.seal import seal_model
from teellm.devmodel import make_model_dir

CHUNK = 4096


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "tiny", shards=2)


@pytest.fixture(scope="module")
def publisher():  # type: ignore[no-untyped-def]
    return generate_signing_key()


def _reference(model: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def test_round_trip_bit_for_bit(model: Path, publisher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = seal_model(
        model,
        tmp_path / "b",
        model_id="dev/tiny",
        version=3,
        signing_key=publisher,
        chunk_size=CHUNK,
    )
    ref = _reference(model)
    with load_bundle(
        tmp_path / "b", content_key=res.content_key, trusted_publishers=[publisher.public_key()]
    ) as loaded:
        assert loaded.manifest.digest() == res.manifest.digest()
        assert set(loaded.tensors) == set(ref)
        for name, tensor in ref.items():
            got = loaded.tensors[name]
            assert got.dtype == tensor.dtype and got.shape == tensor.shape
            assert _bits(got) == _bits(tensor), name
        for f in model.iterdir():
            assert bytes(loaded.files[f.name]) == f.read_bytes()
            assert loaded.files[f.name].readonly
        assert set(loaded.files) == {p.name for p in model.iterdir()}


def test_empty_and_exact_chunk_files(publisher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "m"
    src.mkdir()
    (src / "empty.txt").write_bytes(b"")
    (src / "exact.bin").write_bytes(os.urandom(2 * CHUNK))
    (src / "odd.bin").write_bytes(os.urandom(CHUNK + 1))
    (src / ".hidden").write_bytes(b"not sealed")
    (src / "sub").mkdir()
    res = seal_model(
        src, tmp_path / "b", model_id="x", version=1, signing_key=publisher, chunk_size=CHUNK
    )
    assert [f.name for f in res.manifest.files] == ["empty.txt", "exact.bin", "odd.bin"]
    assert data_path(tmp_path / "b", "empty.txt").stat().st_size == stream.TAG_SIZE
    with load_bundle(
        tmp_path / "b", content_key=res.content_key, trusted_publishers=[publisher.public_key()]
    ) as loaded:
        for name in ("empty.txt", "exact.bin", "odd.bin"):
            assert bytes(loaded.files[name]) == (src / name).read_bytes()
        assert loaded.tensors == {}


def test_manifest_identity_and_fields(model: Path, publisher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = seal_model(
        model,
        tmp_path / "b",
        model_id="org/model-1.5",
        version=7,
        signing_key=publisher,
        chunk_size=CHUNK,
    )
    m = read_manifest(tmp_path / "b")
    raw = (tmp_path / "b" / "manifest.json").read_bytes()
    import hashlib

    assert m.digest() == hashlib.sha256(raw).digest() == res.manifest.digest()
    assert m.digest_hex() == m.digest().hex() and len(m.digest()) == 32
    assert m.model_id == "org/model-1.5" and m.version == 7
    assert m.publisher_key_id == key_id(publisher.public_key())
    assert m.publisher_key == raw_public_key(publisher.public_key()).hex()
    assert m.cipher_suite == stream.CIPHER_SUITE and m.chunk_size == CHUNK
    body = json.loads(raw)
    assert set(body) == {
        "format",
        "model_id",
        "version",
        "created",
        "publisher_key",
        "publisher_key_id",
        "cipher_suite",
        "chunk_size",
        "key_commitment",
        "files",
    }
    assert {f["name"] for f in body["files"]} == {p.name for p in model.iterdir()}
    # The signature covers the digest's bytes; the binding digest excludes ct digests.
    assert m.binding_digest() != m.digest()


def test_each_seal_has_a_fresh_key_and_identity(model: Path, publisher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = seal_model(model, tmp_path / "a", model_id="m", version=1, signing_key=publisher)
    b = seal_model(model, tmp_path / "b", model_id="m", version=1, signing_key=publisher)
    assert a.content_key != b.content_key
    assert a.manifest.digest() != b.manifest.digest()
    assert "SecretBytes" not in repr(a) and a.content_key.bytes().hex() not in repr(a)


def test_seal_refuses_non_empty_output_and_bad_input(
    model: Path, publisher, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "b"
    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(BundleExistsError):
        seal_model(model, out, model_id="m", version=1, signing_key=publisher)
    with pytest.raises(BundleFormatError):
        seal_model(model, tmp_path / "c", model_id="../evil", version=1, signing_key=publisher)
    with pytest.raises(BundleFormatError):
        seal_model(model, tmp_path / "c", model_id="m", version=0, signing_key=publisher)
    with pytest.raises(BundleFormatError):
        seal_model(
            model, tmp_path / "c", model_id="m", version=1, signing_key=publisher, chunk_size=5000
        )
    with pytest.raises(BundleFormatError):
        seal_model(
            tmp_path / "nope", tmp_path / "c", model_id="m", version=1, signing_key=publisher
        )


def test_key_files(tmp_path: Path) -> None:
    sk = generate_signing_key()
    pub_path = write_signing_key(tmp_path / "publisher.key", sk)
    assert pub_path == tmp_path / "publisher.pub"
    assert stat.S_IMODE((tmp_path / "publisher.key").stat().st_mode) == 0o600
    assert key_id(load_signing_key(tmp_path / "publisher.key").public_key()) == key_id(
        sk.public_key()
    )
    assert key_id(load_public_key(pub_path)) == key_id(sk.public_key())
    assert len(key_id(sk.public_key())) == 64
    with pytest.raises(KeyFileError):
        load_signing_key(pub_path)
    with pytest.raises(KeyFileError):
        load_public_key(tmp_path / "missing.pub")

    key = generate_content_key()
    write_content_key(tmp_path / "content.key", key)
    text = (tmp_path / "content.key").read_text()
    assert (
        len(text) == 65
        and text.endswith("\n")
        and text[:64] == bytes(content_key_hex(key)).decode()
    )
    assert stat.S_IMODE((tmp_path / "content.key").stat().st_mode) == 0o600
    assert read_content_key(tmp_path / "content.key") == key
    for bad in ["", "00" * 31 + "\n", "G" * 64 + "\n", ("AB" * 32) + "\n", "00" * 33]:
        (tmp_path / "bad.key").write_text(bad)
        with pytest.raises(KeyFileError) as info:
            read_content_key(tmp_path / "bad.key")
        assert info.value.code == "key_file_invalid"


def _chunk_layout(manifest, name: str) -> tuple[int, list[tuple[int, int]]]:  # type: ignore[no-untyped-def]
    entry = manifest.file(name)
    count = stream.chunk_count(entry.size, manifest.chunk_size)
    spans = []
    for i in range(count):
        n = min(manifest.chunk_size, entry.size - i * manifest.chunk_size)
        spans.append((i * (manifest.chunk_size + stream.TAG_SIZE), n))
    return count, spans


def _reseal_with_key(bundle: Path, manifest, key: bytes, name: str, plaintext: bytes) -> None:  # type: ignore[no-untyped-def]
    """What a content-key holder can do: encrypt *other* plaintext with the exact
    nonces and AADs of the bundle, so every AES-GCM tag is valid."""
    aead = AESGCM(key)
    entry = manifest.file(name)
    prefix = bytes.fromhex(entry.nonce_prefix)
    count, spans = _chunk_layout(manifest, name)
    out = bytearray()
    for i, (_, n) in enumerate(spans):
        pt = plaintext[i * manifest.chunk_size : i * manifest.chunk_size + n]
        nonce = stream.chunk_nonce(prefix, i, i == count - 1)
        out += aead.encrypt(nonce, pt, stream.chunk_aad(manifest.binding_digest(), name, i))
    data_path(bundle, name).write_bytes(bytes(out))


@pytest.mark.parametrize("verify_plaintext", [True, False])
def test_content_key_holder_cannot_substitute_weights(
    model: Path,
    publisher,
    tmp_path: Path,
    verify_plaintext: bool,  # type: ignore[no-untyped-def]
) -> None:
    res = seal_model(
        model, tmp_path / "b", model_id="m", version=1, signing_key=publisher, chunk_size=CHUNK
    )
    name = sorted(p.name for p in model.glob("*.safetensors"))[0]
    original = (model / name).read_bytes()
    # Other weights with a valid layout: same header, different tensor bytes.
    header_len = 8 + int.from_bytes(original[:8], "little")
    forged = original[:header_len] + os.urandom(len(original) - header_len)
    key = res.content_key.bytes()

    # Control: the same procedure with the original plaintext loads fine, so the
    # failure below comes from the commitment, not from a broken re-encryption.
    _reseal_with_key(tmp_path / "b", res.manifest, key, name, original)
    load_bundle(
        tmp_path / "b", content_key=res.content_key, trusted_publishers=[publisher.public_key()]
    ).close()

    _reseal_with_key(tmp_path / "b", res.manifest, key, name, forged)
    with pytest.raises(ContentCommitmentError) as info:
        load_bundle(
            tmp_path / "b",
            content_key=res.content_key,
            trusted_publishers=[publisher.public_key()],
            verify_plaintext=verify_plaintext,
        )
    assert info.value.code == "content_commitment_mismatch"
    assert name in str(info.value)


def test_commitment_functions_are_binding_inputs() -> None:
    k = stream.plaintext_commitment_key(b"k" * 32)
    base = stream.plaintext_commitment(k, "a", 3, [b"1" * 32])
    assert base != stream.plaintext_commitment(k, "b", 3, [b"1" * 32])
    assert base != stream.plaintext_commitment(k, "a", 4, [b"1" * 32])
    assert base != stream.plaintext_commitment(k, "a", 3, [b"2" * 32])
    assert base != stream.plaintext_commitment(
        stream.plaintext_commitment_key(b"j" * 32), "a", 3, [b"1" * 32]
    )
    assert stream.ciphertext_digest([b"1" * 32]) != stream.ciphertext_digest([b"1" * 32] * 2)
    assert stream.key_commitment(b"k" * 32) != stream.key_commitment(b"j" * 32)
    assert stream.chunk_nonce(b"p" * 7, 1, True) != stream.chunk_nonce(b"p" * 7, 1, False)
    assert len(stream.chunk_nonce(b"p" * 7, 2**32 - 1, True)) == 12
