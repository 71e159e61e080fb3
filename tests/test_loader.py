"""The loader: zero-copy tensors in protected memory, and no plaintext weight on disk."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from teellm.bundle.keys import generate_signing_key
from teellm.bundle.loader import load_bundle
from teellm.bundle.seal import seal_model
from teellm.cli import app
from teellm.devmodel import make_model_dir

CHUNK = 4096

# Files opened for writing while a test has ``_WATCH`` on (audit hooks are permanent,
# so the hook is installed once and gated by this flag).
_WATCH: dict[str, object] = {"on": False, "paths": set()}


def _audit(event: str, args: tuple) -> None:  # type: ignore[type-arg]
    if event != "open" or not _WATCH["on"]:
        return
    path, mode, flags = (list(args) + [None, None])[:3]
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    )
    if writing and isinstance(path, (str, bytes, os.PathLike)):
        _WATCH["paths"].add(os.fsdecode(path))  # type: ignore[union-attr]


sys.addaudithook(_audit)


def _has(path: Path, needle: bytes) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > 512 * 1024 * 1024:
            return False
        return needle in path.read_bytes()
    except OSError:
        return False


def _recent_files(root: Path, since: float, skip: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        if Path(dirpath).resolve().is_relative_to(skip):
            dirnames[:] = []
            continue
        for name in filenames:
            p = Path(dirpath) / name
            try:
                if p.is_file() and p.stat().st_mtime >= since:
                    out.append(p)
            except OSError:
                continue
    return out


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("loader")
    model = make_model_dir(root / "model", shards=2)
    sk = generate_signing_key()
    res = seal_model(model, root / "b", model_id="m", version=1, signing_key=sk, chunk_size=CHUNK)
    return res, sk, model


@pytest.mark.parametrize("prefer_secret", [True, False])
def test_tensors_are_zero_copy_views_of_protected_memory(sealed, prefer_secret: bool) -> None:  # type: ignore[no-untyped-def]
    res, sk, _ = sealed
    loaded = load_bundle(
        res.bundle_dir,
        content_key=res.content_key,
        trusted_publishers=[sk.public_key()],
        prefer_secret=prefer_secret,
    )
    buf = loaded._buffer
    lo, hi = buf.address, buf.address + buf.size
    for name, t in loaded.tensors.items():
        ptr = t.untyped_storage().data_ptr()
        assert lo <= ptr and ptr + t.numel() * t.element_size() <= hi, name
        assert t.data_ptr() % t.element_size() == 0
    report = loaded.protection
    if prefer_secret:
        from teellm.memory import probe_buffer_protections

        assert report.memfd_secret == probe_buffer_protections().memfd_secret
    if not prefer_secret:
        assert not report.memfd_secret and report.dontdump
    # A write through a tensor is visible in the file view: same bytes, no copy.
    name = "model.norm.weight"
    t = loaded.tensors[name]
    before = t[0].item()
    t[0] = 123.0
    assert loaded.tensors[name][0].item() == 123.0
    t[0] = before
    keep_t, keep_v = loaded.tensors["lm_head.weight"], loaded.files["config.json"]
    assert keep_t.abs().sum().item() > 0 and bytes(keep_v[:1]) == b"{"
    loaded.close()
    loaded.close()
    assert loaded.closed and loaded.tensors == {} and loaded.files == {}
    # Views kept past close read zeros: the plaintext is gone, nothing crashes.
    assert keep_t.abs().sum().item() == 0 and bytes(keep_v[:1]) == b"\0"


def test_verify_plaintext_off_still_loads(sealed) -> None:  # type: ignore[no-untyped-def]
    res, sk, _ = sealed
    with load_bundle(
        res.bundle_dir,
        content_key=res.content_key,
        trusted_publishers=[sk.public_key()],
        verify_plaintext=False,
        workers=1,
    ) as loaded:
        assert len(loaded.tensors) == 21


def test_expected_digest_pins_the_manifest(sealed) -> None:  # type: ignore[no-untyped-def]
    from teellm.bundle.errors import ManifestChangedError

    res, sk, _ = sealed
    args = {"content_key": res.content_key, "trusted_publishers": [sk.public_key()], "workers": 1}
    digest = res.manifest.digest()
    with load_bundle(res.bundle_dir, expected_digest=digest, **args) as loaded:
        assert loaded.manifest.digest() == digest
    other = bytes([digest[0] ^ 1]) + digest[1:]
    with pytest.raises(ManifestChangedError):
        load_bundle(res.bundle_dir, expected_digest=other, **args)


def test_no_plaintext_weight_byte_reaches_disk(tmp_path: Path) -> None:
    canary = os.urandom(32)
    pattern = torch.frombuffer(bytearray(canary * 2048), dtype=torch.uint8).clone()
    model = make_model_dir(tmp_path / "model", shards=2, extra_tensors={"canary": pattern})
    # Positive control: the scan finds the canary where it is.
    assert any(_has(p, canary) for p in model.iterdir())
    sk = generate_signing_key()
    from teellm.bundle.keys import write_content_key, write_signing_key

    write_signing_key(tmp_path / "p.key", sk)
    since = time.time() - 1
    _WATCH["paths"] = set()
    _WATCH["on"] = True
    try:
        res = seal_model(
            model,
            tmp_path / "bundle",
            model_id="canary",
            version=1,
            signing_key=sk,
            chunk_size=CHUNK,
        )
        with load_bundle(
            tmp_path / "bundle", content_key=res.content_key, trusted_publishers=[sk.public_key()]
        ) as loaded:
            assert bytes(loaded.tensors["canary"][:32].numpy().tobytes()) == canary
        write_content_key(tmp_path / "c.key", res.content_key)
        from typer.testing import CliRunner

        out = CliRunner().invoke(
            app,
            [
                "verify",
                str(tmp_path / "bundle"),
                "--key",
                str(tmp_path / "c.key"),
                "--trusted-publisher",
                str(tmp_path / "p.pub"),
                "--json",
            ],
        )
        assert out.exit_code == 0, out.output
        assert canary.hex() not in out.output
    finally:
        _WATCH["on"] = False
    written = {Path(p) for p in _WATCH["paths"]}  # type: ignore[attr-defined]
    assert any(p.name.endswith(".enc") for p in written), "the audit hook saw no writes"
    scanned = set((tmp_path / "bundle").rglob("*")) | written
    skip = model.resolve()
    for root in {Path(tempfile.gettempdir()), Path("/dev/shm")}:
        if root.is_dir():
            scanned |= set(_recent_files(root, since, skip))
    scanned = {p for p in scanned if not p.resolve().is_relative_to(skip)}
    assert scanned
    leaks = [str(p) for p in scanned if _has(p, canary)]
    assert leaks == []


_LIMITED_LOAD = """
import json, sys, hashlib
from teellm.bundle.keys import load_public_key, read_content_key
from teellm.bundle.loader import load_bundle
with load_bundle(sys.argv[1], content_key=read_content_key(sys.argv[2]),
                 trusted_publishers=[load_public_key(sys.argv[3])]) as b:
    digest = hashlib.sha256()
    for name in sorted(b.tensors):
        digest.update(b.tensors[name].contiguous().view(-1).view(torch_u8).numpy().tobytes())
    print(json.dumps({"protection": b.protection.model_dump(), "digest": digest.hexdigest()}))
""".replace("torch_u8", "__import__('torch').uint8")


def test_load_works_and_reports_exactly_under_a_memlock_limit(sealed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Without CAP_IPC_LOCK and with RLIMIT_MEMLOCK at 64 KiB, memfd_secret and mlock are
    refused by the kernel: the load must still succeed and say so."""
    import hashlib
    import shutil
    import subprocess

    from teellm.bundle.keys import write_content_key

    res, sk, model = sealed
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "p.pub").write_bytes(
        sk.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    write_content_key(tmp_path / "c.key", res.content_key)
    cmd = [
        sys.executable,
        "-c",
        _LIMITED_LOAD,
        str(res.bundle_dir),
        str(tmp_path / "c.key"),
        str(tmp_path / "p.pub"),
    ]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv is needed to drop CAP_IPC_LOCK as root")
        cmd = ["setpriv", "--bounding-set", "-ipc_lock", "--inh-caps", "-ipc_lock", *cmd]

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))

    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    report = data["protection"]
    assert report["memfd_secret"] is False and report["mlock"] is False
    assert report["dontdump"] is True
    assert any("mlock failed" in n for n in report["notes"])
    assert any("memfd_secret" in n for n in report["notes"])
    from safetensors.torch import load_file

    ref = {}
    for f in sorted(model.glob("*.safetensors")):
        ref.update(load_file(f))
    digest = hashlib.sha256()
    for name in sorted(ref):
        digest.update(ref[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    assert data["digest"] == digest.hexdigest()
