"""Tamper matrix: every modification fails with its own typed error, never a partial load."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

import teellm.bundle.loader as loader_mod
from teellm.bundle import stream
from teellm.bundle.errors import BundleError
from teellm.bundle.keys import generate_content_key, generate_signing_key
from teellm.bundle.loader import load_bundle
from teellm.bundle.manifest import data_path, read_manifest
from teellm.bundle.seal import SealResult, seal_model
from teellm.devmodel import make_model_dir
from teellm.memory import ProtectedBuffer

CHUNK = 4096


class Env:
    def __init__(self, root: Path) -> None:
        self.model = make_model_dir(root / "model", shards=2)
        self.other_model = make_model_dir(root / "other", shards=2, seed=1)
        self.publisher = generate_signing_key()
        self.stranger = generate_signing_key()
        self.v1 = seal_model(
            self.model,
            root / "v1",
            model_id="m",
            version=1,
            signing_key=self.publisher,
            chunk_size=CHUNK,
        )
        # v2 under the SAME content key: splicing must fail on the binding, not the key.
        self.v2 = seal_model(
            self.model,
            root / "v2",
            model_id="m",
            version=2,
            signing_key=self.publisher,
            chunk_size=CHUNK,
            content_key=self.v1.content_key,
        )
        self.other = seal_model(
            self.other_model,
            root / "o",
            model_id="other",
            version=1,
            signing_key=self.publisher,
            chunk_size=CHUNK,
            content_key=self.v1.content_key,
        )
        self.shard = sorted(p.name for p in self.model.glob("*.safetensors"))[-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("tamper"))


@pytest.fixture
def bundle(env: Env, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(env.v1.bundle_dir, dst)
    return dst


def _load(env: Env, bundle: Path, result: SealResult | None = None, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("content_key", (result or env.v1).content_key)
    kw.setdefault("trusted_publishers", [env.publisher.public_key()])
    return load_bundle(bundle, **kw)  # type: ignore[arg-type]


def _stored(bundle: Path, name: str) -> bytearray:
    return bytearray(data_path(bundle, name).read_bytes())


def _put(bundle: Path, name: str, data: bytes | bytearray) -> None:
    data_path(bundle, name).write_bytes(bytes(data))


def _expect(env: Env, bundle: Path, code: str, **kw: object) -> BundleError:
    with pytest.raises(BundleError) as info:
        _load(env, bundle, **kw)
    assert info.value.code == code, (info.value.code, str(info.value))
    text = f"{info.value} {info.value!r}"
    assert text.strip()
    # Nothing secret in an error: no key, no plaintext.
    assert env.v1.content_key.bytes().hex() not in text
    assert env.v1.content_key.bytes() not in text.encode(errors="replace")
    return info.value


def test_untampered_copy_loads(env: Env, bundle: Path) -> None:
    _load(env, bundle).close()


def test_bit_flip_in_every_chunk(env: Env, bundle: Path) -> None:
    rng = random.Random(7)
    stored = _stored(bundle, env.shard)
    entry = env.v1.manifest.file(env.shard)
    count = stream.chunk_count(entry.size, CHUNK)
    assert count > 3
    for i in range(count):
        start = i * (CHUNK + stream.TAG_SIZE)
        end = min(start + CHUNK + stream.TAG_SIZE, len(stored))
        pos = rng.randrange(start, end)
        bad = bytearray(stored)
        bad[pos] ^= 1 << rng.randrange(8)
        _put(bundle, env.shard, bad)
        err = _expect(env, bundle, "chunk_auth_failed")
        assert f"chunk {i} " in str(err)


def test_bit_flip_in_small_file(env: Env, bundle: Path) -> None:
    stored = _stored(bundle, "config.json")
    stored[3] ^= 0x10
    _put(bundle, "config.json", stored)
    _expect(env, bundle, "chunk_auth_failed")


def test_bit_flip_in_manifest_value(env: Env, bundle: Path) -> None:
    raw = bytearray((bundle / "manifest.json").read_bytes())
    pos = raw.index(b'"key_commitment":"') + len(b'"key_commitment":"')
    # Flip to another lowercase hex digit: still canonical JSON, signature must fail.
    raw[pos] = ord("1") if raw[pos] != ord("1") else ord("3")
    (bundle / "manifest.json").write_bytes(bytes(raw))
    _expect(env, bundle, "signature_invalid")


def test_manifest_version_raised_by_attacker(env: Env, bundle: Path) -> None:
    raw = (bundle / "manifest.json").read_bytes().replace(b'"version":1', b'"version":9')
    (bundle / "manifest.json").write_bytes(raw)
    _expect(env, bundle, "signature_invalid")


def test_bit_flip_breaking_manifest_syntax(env: Env, bundle: Path) -> None:
    raw = bytearray((bundle / "manifest.json").read_bytes())
    raw[0] ^= 0x01  # '{' -> 'z'
    (bundle / "manifest.json").write_bytes(bytes(raw))
    _expect(env, bundle, "bundle_malformed")


def test_bit_flip_in_signature(env: Env, bundle: Path) -> None:
    sig = bytearray((bundle / "manifest.sig").read_bytes())
    sig[10] ^= 0x04
    (bundle / "manifest.sig").write_bytes(bytes(sig))
    _expect(env, bundle, "signature_invalid")


def test_signature_missing_or_short(env: Env, bundle: Path) -> None:
    (bundle / "manifest.sig").write_bytes(b"\0" * 10)
    _expect(env, bundle, "signature_invalid")
    (bundle / "manifest.sig").unlink()
    _expect(env, bundle, "file_missing")


def _chunks(stored: bytearray) -> list[bytes]:
    step = CHUNK + stream.TAG_SIZE
    return [bytes(stored[i : i + step]) for i in range(0, len(stored), step)]


def test_chunk_removed(env: Env, bundle: Path) -> None:
    parts = _chunks(_stored(bundle, env.shard))
    _put(bundle, env.shard, b"".join(parts[:1] + parts[2:]))
    _expect(env, bundle, "file_truncated")


def test_last_chunk_removed(env: Env, bundle: Path) -> None:
    parts = _chunks(_stored(bundle, env.shard))
    _put(bundle, env.shard, b"".join(parts[:-1]))
    _expect(env, bundle, "file_truncated")


def test_chunk_duplicated(env: Env, bundle: Path) -> None:
    parts = _chunks(_stored(bundle, env.shard))
    _put(bundle, env.shard, b"".join(parts[:2] + parts[1:]))
    _expect(env, bundle, "file_extended")


def test_chunk_moved(env: Env, bundle: Path) -> None:
    parts = _chunks(_stored(bundle, env.shard))
    parts[1], parts[2] = parts[2], parts[1]
    _put(bundle, env.shard, b"".join(parts))
    _expect(env, bundle, "chunk_auth_failed")


def test_truncated_by_one_byte(env: Env, bundle: Path) -> None:
    _put(bundle, env.shard, _stored(bundle, env.shard)[:-1])
    _expect(env, bundle, "file_truncated")


def test_extended_by_one_byte(env: Env, bundle: Path) -> None:
    _put(bundle, env.shard, _stored(bundle, env.shard) + b"\0")
    _expect(env, bundle, "file_extended")


def test_file_missing(env: Env, bundle: Path) -> None:
    data_path(bundle, "tokenizer.json").unlink()
    _expect(env, bundle, "file_missing")


def test_file_from_another_version_same_key(env: Env, bundle: Path) -> None:
    shutil.copy(data_path(env.v2.bundle_dir, env.shard), data_path(bundle, env.shard))
    _expect(env, bundle, "chunk_auth_failed")


def test_file_from_another_model_same_key(env: Env, bundle: Path) -> None:
    # Same file name, same size (same architecture), different weights and bundle.
    src = data_path(env.other.bundle_dir, env.shard)
    assert src.stat().st_size == data_path(bundle, env.shard).stat().st_size
    shutil.copy(src, data_path(bundle, env.shard))
    _expect(env, bundle, "chunk_auth_failed")


def test_chunk_spliced_from_another_version(env: Env, bundle: Path) -> None:
    mine = _chunks(_stored(bundle, env.shard))
    theirs = _chunks(_stored(env.v2.bundle_dir, env.shard))
    mine[1] = theirs[1]
    _put(bundle, env.shard, b"".join(mine))
    _expect(env, bundle, "chunk_auth_failed")


def test_files_swapped_within_bundle(env: Env, bundle: Path) -> None:
    a, b = data_path(bundle, "config.json"), data_path(bundle, "generation_config.json")
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(BundleError) as info:
        _load(env, bundle)
    assert info.value.code in {"chunk_auth_failed", "file_truncated", "file_extended"}


def test_manifest_of_another_version(env: Env, bundle: Path) -> None:
    # v2's valid, signed manifest over v1's data (same key): every chunk is bound
    # to v1's manifest, so v1's data cannot pass as v2.
    for f in ("manifest.json", "manifest.sig"):
        shutil.copy(env.v2.bundle_dir / f, bundle / f)
    _expect(env, bundle, "chunk_auth_failed")


def test_wrong_content_key(env: Env, bundle: Path) -> None:
    _expect(env, bundle, "wrong_content_key", content_key=generate_content_key())


def test_unknown_publisher(env: Env, bundle: Path) -> None:
    _expect(env, bundle, "untrusted_publisher", trusted_publishers=[env.stranger.public_key()])
    _expect(env, bundle, "untrusted_publisher", trusted_publishers=[])


def test_resigned_by_unknown_publisher(env: Env, tmp_path: Path) -> None:
    stranger_bundle = seal_model(
        env.model,
        tmp_path / "s",
        model_id="m",
        version=5,
        signing_key=env.stranger,
        chunk_size=CHUNK,
    )
    _expect(
        env,
        stranger_bundle.bundle_dir,
        "untrusted_publisher",
        content_key=stranger_bundle.content_key,
    )


def test_version_below_minimum(env: Env, bundle: Path) -> None:
    _expect(env, bundle, "version_rollback", min_version=2)
    _load(env, bundle, min_version=1).close()
    _load(env, env.v2.bundle_dir, min_version=2).close()


def test_failures_leave_nothing_loaded(
    env: Env, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[ProtectedBuffer] = []

    class Tracking(ProtectedBuffer):
        def __init__(self, size: int, **kw: bool) -> None:
            super().__init__(size, **kw)
            made.append(self)

    monkeypatch.setattr(loader_mod, "ProtectedBuffer", Tracking)
    parts = _chunks(_stored(bundle, env.shard))
    last = bytearray(parts[-1])
    last[-1] ^= 1
    parts[-1] = bytes(last)
    _put(bundle, env.shard, b"".join(parts))
    _expect(env, bundle, "chunk_auth_failed")
    assert made and all(b.closed for b in made)
    assert all(v == 0 for v in made[0].view[:4096])


def test_typed_errors_are_teellm_errors(env: Env) -> None:
    from teellm.errors import TeellmError

    assert issubclass(BundleError, TeellmError)
    m = read_manifest(env.v1.bundle_dir)
    assert m.digest() == env.v1.manifest.digest()


def test_special_files_are_refused_not_waited_on(env: Env, bundle: Path) -> None:
    import os

    target = data_path(bundle, "config.json")
    target.unlink()
    os.mkfifo(target)  # opening a FIFO for reading would block forever
    _expect(env, bundle, "bundle_malformed")
    (bundle / "manifest.sig").unlink()
    os.mkfifo(bundle / "manifest.sig")
    _expect(env, bundle, "bundle_malformed")


def test_zeroized_key_is_refused(env: Env, bundle: Path) -> None:
    key = generate_content_key()
    key.zeroize()
    _expect(env, bundle, "wrong_content_key", content_key=key)


def test_out_of_memory_is_a_typed_error(
    env: Env, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from teellm.memory import ProtectedMemoryError

    def refuse(size: int, **kw: bool) -> ProtectedBuffer:
        raise ProtectedMemoryError("mmap failed")

    monkeypatch.setattr(loader_mod, "ProtectedBuffer", refuse)
    _expect(env, bundle, "insufficient_memory")
