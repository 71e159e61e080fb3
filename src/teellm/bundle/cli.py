"""``teellm keygen | seal | inspect | verify``: publish and check sealed bundles."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from teellm.bundle.stream import DEFAULT_CHUNK_SIZE
from teellm.errors import TeellmError


def _emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True))


def _fail(exc: TeellmError, as_json: bool) -> typer.Exit:
    if as_json:
        _emit_json({"ok": False, "error": {"code": exc.code, "message": str(exc)}})
    else:
        typer.echo(f"error: {exc.code}: {exc}", err=True)
    return typer.Exit(1)


@contextlib.contextmanager
def _progress(enabled: bool, tasks: dict[str, tuple[str, int]]) -> Iterator[Callable[..., None]]:
    """Yield ``advance(task, n)``; a rich bar on a terminal, a no-op otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield lambda *_: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        ids = {k: bar.add_task(desc, total=total) for k, (desc, total) in tasks.items()}

        def advance(task: str, n: int) -> None:
            bar.advance(ids[task], n)

        yield advance


def keygen(
    out: Path = typer.Option(..., "--out", help="Private key file to write (PKCS8 PEM, 0600)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing key files."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Make an Ed25519 publisher key; the public key is written beside it as <name>.pub."""
    from teellm.bundle.keys import (
        generate_signing_key,
        key_id,
        public_key_path,
        raw_public_key,
        write_signing_key,
    )

    if not force and (out.exists() or public_key_path(out).exists()):
        typer.echo(f"error: {out} or its .pub exists (use --force)", err=True)
        raise typer.Exit(1)
    key = generate_signing_key()
    pub_path = write_signing_key(out, key)
    info = {
        "private_key": str(out),
        "public_key_file": str(pub_path),
        "public_key": raw_public_key(key.public_key()).hex(),
        "key_id": key_id(key.public_key()),
    }
    if as_json:
        _emit_json(info)
        return
    typer.echo(f"private key: {out}")
    typer.echo(f"public key:  {pub_path}")
    typer.echo(f"public key (raw hex): {info['public_key']}")
    typer.echo(f"key id: {info['key_id']}")


def seal(
    model_dir: Path = typer.Argument(..., help="Hugging Face style model directory."),
    model_id: str = typer.Option(..., "--model-id", help="Model id, e.g. org/name."),
    version: int = typer.Option(..., "--version", help="Integer version, increasing per model."),
    signing_key: Path = typer.Option(..., "--signing-key", help="Publisher private key (PEM)."),
    out: Path = typer.Option(..., "--out", help="Bundle directory to create (must be empty)."),
    key_out: Path | None = typer.Option(
        None, "--key-out", help="Write the content key here (0600) instead of printing it."
    ),
    chunk_size: int = typer.Option(
        DEFAULT_CHUNK_SIZE, "--chunk-size", help="Chunk size in bytes (power of two)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Encrypt a model directory into a signed bundle with a fresh content key."""
    from teellm.bundle.keys import content_key_hex, load_signing_key, write_content_key
    from teellm.bundle.seal import model_files, seal_model

    if key_out is not None and key_out.exists():
        typer.echo(f"error: {key_out} exists; refusing to overwrite a content key", err=True)
        raise typer.Exit(1)
    try:
        key = load_signing_key(signing_key)
        total = sum(p.stat().st_size for p in model_files(model_dir))
        tasks = {"hash": ("hashing", total), "encrypt": ("encrypting", total)}
        with _progress(not as_json, tasks) as advance:
            result = seal_model(
                model_dir,
                out,
                model_id=model_id,
                version=version,
                signing_key=key,
                chunk_size=chunk_size,
                progress=advance,
            )
    except TeellmError as exc:
        raise _fail(exc, as_json) from None
    m = result.manifest
    info: dict[str, Any] = {
        "ok": True,
        "bundle": str(out),
        "model_id": m.model_id,
        "version": m.version,
        "manifest_digest": m.digest_hex(),
        "publisher_key_id": m.publisher_key_id,
        "files": len(m.files),
        "bytes": m.total_size,
    }
    with result.content_key as content_key:
        if key_out is not None:
            write_content_key(key_out, content_key)
            info["content_key_file"] = str(key_out)
            shown = None
        else:
            shown = content_key_hex(content_key)
            # Printed once, on purpose: no --key-out means the publisher copies it
            # into the key broker by hand.
            info["content_key"] = shown.decode()
    if as_json:
        _emit_json(info)
    else:
        typer.echo(f"sealed {m.model_id} v{m.version} -> {out}")
        typer.echo(f"manifest digest: {m.digest_hex()}")
        if key_out is not None:
            typer.echo(f"content key written to {key_out}")
        else:
            typer.echo(
                f"content key (store it in the key broker; shown once): {info['content_key']}"
            )
    if shown is not None:
        from teellm.crypto.secret import zeroize

        zeroize(shown)


def _manifest_table(m: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    head = Table(show_header=False, box=None)
    for k, v in [
        ("model", m.model_id),
        ("version", str(m.version)),
        ("created", m.created),
        ("digest", m.digest_hex()),
        ("publisher key id", m.publisher_key_id),
        ("cipher suite", m.cipher_suite),
        ("chunk size", str(m.chunk_size)),
        ("signature", "valid (embedded publisher key)"),
    ]:
        head.add_row(k, v)
    console.print(head)
    files = Table("file", "size", "ciphertext sha256")
    for f in m.files:
        files.add_row(f.name, f"{f.size:,}", f.ciphertext_sha256[:16] + "...")
    console.print(files)


def inspect(
    bundle_dir: Path = typer.Argument(..., help="Bundle directory."),
    check_data: bool = typer.Option(
        False, "--check-data", help="Also check every encrypted file against the manifest."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a bundle's manifest and check its signature (no key needed)."""
    from teellm.bundle.audit import check_ciphertext
    from teellm.bundle.manifest import read_manifest

    try:
        m = read_manifest(bundle_dir)
        if check_data:
            tasks = {"check": ("checking", sum(m.encrypted_size(f) for f in m.files))}
            with _progress(not as_json, tasks) as advance:
                check_ciphertext(bundle_dir, m, progress=lambda n: advance("check", n))
    except TeellmError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        _emit_json({"ok": True, "signature_valid": True, "data_checked": check_data, **m.summary()})
    else:
        _manifest_table(m)
        if check_data:
            typer.echo("encrypted data matches the manifest")


def verify(
    bundle_dir: Path = typer.Argument(..., help="Bundle directory."),
    key: Path = typer.Option(..., "--key", help="Content key file (64 hex chars)."),
    trusted_publisher: list[Path] = typer.Option(
        ..., "--trusted-publisher", help="Trusted publisher public key (PEM); repeatable."
    ),
    min_version: int | None = typer.Option(
        None, "--min-version", help="Refuse versions below this (anti-rollback)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Decrypt and check everything in memory; exit 0 only if all holds. Writes nothing."""
    from teellm.bundle.keys import load_public_key, read_content_key
    from teellm.bundle.loader import load_bundle
    from teellm.bundle.manifest import read_manifest

    try:
        publishers = [load_public_key(p) for p in trusted_publisher]
        total = read_manifest(bundle_dir).total_size
        with (
            read_content_key(key) as content_key,
            _progress(not as_json, {"load": ("decrypting", total)}) as advance,
        ):
            loaded = load_bundle(
                bundle_dir,
                content_key=content_key,
                trusted_publishers=publishers,
                min_version=min_version,
                verify_plaintext=True,
                progress=lambda n: advance("load", n),
            )
        with loaded:
            m = loaded.manifest
            info = {
                "ok": True,
                "model_id": m.model_id,
                "version": m.version,
                "manifest_digest": m.digest_hex(),
                "publisher_key_id": m.publisher_key_id,
                "files": len(loaded.files),
                "tensors": len(loaded.tensors),
                "bytes": m.total_size,
                "protection": loaded.protection.model_dump(),
            }
    except TeellmError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        _emit_json(info)
    else:
        typer.echo(
            f"OK: {info['model_id']} v{info['version']} digest {info['manifest_digest']}: "
            f"{info['files']} files, {info['tensors']} tensors, signature, commitments "
            "and every chunk verified"
        )


def register(app: typer.Typer) -> None:
    """Add this component's commands to the ``teellm`` app."""
    app.command("keygen")(keygen)
    app.command("seal")(seal)
    app.command("inspect")(inspect)
    app.command("verify")(verify)
