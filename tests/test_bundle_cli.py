"""``teellm keygen | seal | inspect | verify`` end to end through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teellm.bundle.manifest import data_path
from teellm.cli import app
from teellm.devmodel import make_model_dir

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output


def _seal(
    model: Path, key: Path, out: Path, *extra: str, model_id: str = "m", version: int = 1
) -> tuple[int, str]:
    return _run(
        "seal", str(model), "--model-id", model_id, "--version", str(version),
        "--signing-key", str(key), "--out", str(out), *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    model = make_model_dir(root / "model", shards=2)
    code, out = _run("keygen", "--out", str(root / "publisher.key"), "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["public_key_file"] == str(root / "publisher.pub") and len(info["key_id"]) == 64
    code, out = _seal(
        model, root / "publisher.key", root / "bundle",
        "--key-out", str(root / "content.key"), "--chunk-size", "4096", "--json",
        model_id="dev/tiny", version=2,
    )  # fmt: skip
    assert code == 0, out
    sealed = json.loads(out)
    assert sealed["ok"] and "content_key" not in sealed and sealed["version"] == 2
    return {"root": root, "model": model, "bundle": root / "bundle", "sealed": sealed}  # type: ignore[dict-item]


def test_keygen_refuses_overwrite_and_prints_id(published: dict[str, Path]) -> None:
    code, out = _run("keygen", "--out", str(published["root"] / "publisher.key"))
    assert code == 1 and "exists" in out
    code, out = _run("keygen", "--out", str(published["root"] / "other.key"))
    assert code == 0 and "key id:" in out


def test_seal_prints_key_once_without_key_out(published: dict[str, Path], tmp_path: Path) -> None:
    code, out = _seal(
        published["model"], published["root"] / "publisher.key", tmp_path / "b", "--json"
    )
    assert code == 0, out
    key_hex = json.loads(out)["content_key"]
    assert len(key_hex) == 64 and int(key_hex, 16) >= 0
    (tmp_path / "k").write_text(key_hex + "\n")
    code, out = _run(
        "verify",
        str(tmp_path / "b"),
        "--key",
        str(tmp_path / "k"),
        "--trusted-publisher",
        str(published["root"] / "publisher.pub"),
    )
    assert code == 0 and out.startswith("OK:"), out
    # The key appears in no file of the bundle.
    for p in (tmp_path / "b").rglob("*"):
        if p.is_file():
            assert key_hex.encode() not in p.read_bytes()


def test_seal_error_is_typed(published: dict[str, Path], tmp_path: Path) -> None:
    code, out = _seal(
        published["model"], published["root"] / "publisher.pub", tmp_path / "b", "--json"
    )
    assert code == 1 and json.loads(out)["error"]["code"] == "key_file_invalid"


def test_inspect_without_key(published: dict[str, Path]) -> None:
    code, out = _run("inspect", str(published["bundle"]), "--json", "--check-data")
    assert code == 0, out
    info = json.loads(out)
    assert info["signature_valid"] and info["model_id"] == "dev/tiny" and info["version"] == 2
    assert info["digest"] == published["sealed"]["manifest_digest"]  # type: ignore[index]
    code, out = _run("inspect", str(published["bundle"]))
    assert code == 0 and "dev/tiny" in out and "config.json" in out


def test_inspect_detects_tampering(published: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(published["bundle"], bundle)
    target = data_path(bundle, "config.json")
    raw = bytearray(target.read_bytes())
    raw[0] ^= 1
    target.write_bytes(bytes(raw))
    code, out = _run("inspect", str(bundle))  # manifest alone still fine
    assert code == 0
    code, out = _run("inspect", str(bundle), "--check-data", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "content_commitment_mismatch"
    (bundle / "manifest.sig").write_bytes(b"\0" * 64)
    code, out = _run("inspect", str(bundle))
    assert code == 1 and "signature_invalid" in out


def test_verify_json_and_failures(published: dict[str, Path], tmp_path: Path) -> None:
    root, bundle = published["root"], published["bundle"]
    args = [
        "verify",
        str(bundle),
        "--key",
        str(root / "content.key"),
        "--trusted-publisher",
        str(root / "publisher.pub"),
    ]
    code, out = _run(*args, "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["ok"] and info["tensors"] == 21 and info["files"] == 7
    assert set(info["protection"]) >= {
        "memfd_secret",
        "mlock",
        "dontdump",
        "non_dumpable",
        "core_limit_zero",
        "notes",
    }
    code, out = _run(*args, "--min-version", "3", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "version_rollback"
    (tmp_path / "wrong.key").write_text("ab" * 32 + "\n")
    code, out = _run(
        "verify",
        str(bundle),
        "--key",
        str(tmp_path / "wrong.key"),
        "--trusted-publisher",
        str(root / "publisher.pub"),
    )
    assert code == 1 and "wrong_content_key" in out
    before = sorted(p.name for p in bundle.rglob("*"))
    assert before == sorted(p.name for p in bundle.rglob("*"))  # verify writes nothing


def test_verify_untrusted_publisher(published: dict[str, Path], tmp_path: Path) -> None:
    root = published["root"]
    code, _ = _run("keygen", "--out", str(tmp_path / "stranger.key"))
    assert code == 0
    code, out = _run(
        "verify",
        str(published["bundle"]),
        "--key",
        str(root / "content.key"),
        "--trusted-publisher",
        str(tmp_path / "stranger.pub"),
        "--json",
    )
    assert code == 1 and json.loads(out)["error"]["code"] == "untrusted_publisher"


def test_no_progress_output_when_not_a_tty(published: dict[str, Path], tmp_path: Path) -> None:
    root = published["root"]
    code, out = _run(
        "verify",
        str(published["bundle"]),
        "--key",
        str(root / "content.key"),
        "--trusted-publisher",
        str(root / "publisher.pub"),
    )
    assert code == 0 and out.count("\n") == 1 and "\r" not in out


def test_seal_refuses_to_overwrite_a_content_key(
    published: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "k").write_text("keep me")
    code, out = _seal(
        published["model"],
        published["root"] / "publisher.key",
        tmp_path / "b",
        "--key-out",
        str(tmp_path / "k"),
    )
    assert code == 1 and "exists" in out
    assert (tmp_path / "k").read_text() == "keep me" and not (tmp_path / "b").exists()
