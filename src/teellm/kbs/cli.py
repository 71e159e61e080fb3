"""``teellm kbs``: run the key broker and administer it (keys, policies, audit, master key).

Administration commands work on the broker's database directly (``--db``), so
they need local access to it and, for keys, the master key: the "local" admin
path. Remote administration uses the HTTP admin API with a bearer token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from teellm.errors import TeellmError

DB_ENV = "TEELLM_KBS_DB"
DEFAULT_DB = "sqlite:///kbs.db"

kbs_app = typer.Typer(
    name="kbs",
    help="Key broker: release model keys only to attested TEEs.",
    no_args_is_help=True,
)
policy_app = typer.Typer(help="Release policies.", no_args_is_help=True)
kbs_app.add_typer(policy_app, name="policy")

_DB = typer.Option(
    None, "--db", help=f"Store URL: sqlite:///path.db or postgresql://... (env {DB_ENV})."
)
_MASTER = typer.Option(
    None,
    "--master-key-file",
    help="File with the master key (hex; newest first). Default: env TEELLM_KBS_MASTER_KEY.",
)


def _db(url: str | None) -> str:
    return url or os.environ.get(DB_ENV) or DEFAULT_DB


def _fail(exc: TeellmError) -> typer.Exit:
    typer.echo(f"error: {exc.code}: {exc}", err=True)
    return typer.Exit(1)


def _ring(path: Path | None) -> Any:
    from teellm.kbs.masterkey import MasterKeyRing

    return MasterKeyRing.from_file(path) if path else MasterKeyRing.from_env()


def _broker(db: str | None, master: Path | None, *, need_master: bool = True) -> Any:
    from teellm.crypto.secret import SecretBytes
    from teellm.kbs.broker import KeyBroker
    from teellm.kbs.masterkey import MasterKeyRing
    from teellm.kbs.store import open_store

    ring = _ring(master) if need_master else MasterKeyRing([SecretBytes.random(32)])
    return KeyBroker(open_store(_db(db)), ring)


@kbs_app.command("init-master-key")
def init_master_key(
    path: Path = typer.Argument(..., help="Where to write the new master key (mode 0600)."),
) -> None:
    """Generate a random master key file (refuses to overwrite)."""
    from teellm.kbs.masterkey import generate_master_key_file, master_key_id, parse_master_keys

    try:
        generate_master_key_file(path)
    except FileExistsError:
        typer.echo(f"error: {path} exists", err=True)
        raise typer.Exit(1) from None
    key = parse_master_keys(path.read_text())[0]
    typer.echo(f"master key {master_key_id(key)} written to {path}")


@kbs_app.command("serve")
def serve(
    db: str | None = _DB,
    master_key_file: Path | None = _MASTER,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8470, help="Port to listen on."),
    nonce_ttl: float = typer.Option(60.0, help="Seconds a challenge nonce stays valid."),
    max_failures: int = typer.Option(20, help="Failed attempts per client per minute."),
    collateral: list[str] = typer.Option(
        [], help="Offline verification collateral, TYPE=FILE (e.g. tdx=collateral.json)."
    ),
    admin_socket: Path | None = typer.Option(
        None, help="Also serve the admin API, without token, on this unix socket (mode 0600)."
    ),
) -> None:
    """Run the key broker HTTP service."""
    import uvicorn

    from teellm.kbs.app import create_app
    from teellm.kbs.broker import KeyBroker
    from teellm.kbs.ratelimit import FailureRateLimiter
    from teellm.kbs.store import open_store

    coll: dict[str, bytes] = {}
    for item in collateral:
        kind, _, file = item.partition("=")
        if not file:
            typer.echo("error: --collateral takes TYPE=FILE", err=True)
            raise typer.Exit(2)
        coll[kind] = Path(file).read_bytes()
    try:
        broker = KeyBroker(
            open_store(_db(db)),
            _ring(master_key_file),
            nonce_ttl_s=nonce_ttl,
            rate_limiter=FailureRateLimiter(max_failures=max_failures),
            collateral=coll,
        )
    except TeellmError as exc:
        raise _fail(exc) from None
    env_token = os.environ.get("TEELLM_KBS_ADMIN_TOKEN")
    hashes = []
    if env_token:
        from teellm.kbs.admin import hash_token

        hashes.append(hash_token(env_token))
    local = None
    if admin_socket is not None:
        from teellm.kbs.server import ServerThread, unix_socket

        local = ServerThread(create_app(broker, local_admin=True), sock=unix_socket(admin_socket))
        local.start()
        typer.echo(f"admin API on unix socket {admin_socket}", err=True)
    typer.echo(f"key broker listening on http://{host}:{port} ({broker.store!r})", err=True)
    uvicorn.run(
        create_app(broker, admin_token_hashes=hashes), host=host, port=port, log_level="warning"
    )
    if local is not None and admin_socket is not None:
        local.stop()
        admin_socket.unlink(missing_ok=True)


@kbs_app.command("admin-token")
def admin_token(db: str | None = _DB) -> None:
    """Create a new admin token for the HTTP admin API; prints it once, stores only its hash."""
    from teellm.kbs.admin import META_KEY, new_token
    from teellm.kbs.store import open_store

    try:
        store = open_store(_db(db))
        token, digest = new_token()
        store.set_meta(META_KEY, digest)
        store.close()
    except TeellmError as exc:
        raise _fail(exc) from None
    typer.echo(token)


@kbs_app.command("put-key")
def put_key(
    model_id: str = typer.Option(..., "--model-id", help="Model id."),
    version: int = typer.Option(..., "--version", min=0, help="Model version."),
    key_file: Path = typer.Option(..., "--key-file", help="Content key file (64 hex chars)."),
    bundle: Path | None = typer.Option(
        None, "--bundle", help="Sealed bundle: its manifest digest is bound into key release."
    ),
    manifest_digest: str | None = typer.Option(
        None, "--manifest-digest", help="Manifest digest (hex) to bind, instead of --bundle."
    ),
    replace: bool = typer.Option(False, "--replace", help="Replace an existing key."),
    db: str | None = _DB,
    master_key_file: Path | None = _MASTER,
) -> None:
    """Register a model content key (stored encrypted under the master key)."""
    from teellm.bundle.keys import read_content_key

    try:
        digest: bytes | None = None
        if bundle is not None:
            from teellm.bundle.manifest import read_manifest

            manifest = read_manifest(bundle)
            if manifest.model_id != model_id or manifest.version != version:
                typer.echo("error: the bundle is for another model id or version", err=True)
                raise typer.Exit(1)
            digest = manifest.digest()
        elif manifest_digest is not None:
            try:
                digest = bytes.fromhex(manifest_digest)
            except ValueError:
                typer.echo("error: --manifest-digest is not hex", err=True)
                raise typer.Exit(2) from None
        broker = _broker(db, master_key_file)
        with read_content_key(key_file) as key:
            broker.put_key(
                model_id, version, key, manifest_digest=digest, replace=replace, actor="cli"
            )
        broker.store.close()
    except TeellmError as exc:
        raise _fail(exc) from None
    typer.echo(f"stored key for {model_id} version {version}")


@kbs_app.command("keys")
def list_keys(
    db: str | None = _DB, as_json: bool = typer.Option(False, "--json", help="JSON output.")
) -> None:
    """List registered keys (metadata only; key material is never shown)."""
    from teellm.kbs.store import open_store

    try:
        store = open_store(_db(db))
        rows = store.list_keys()
        store.close()
    except TeellmError as exc:
        raise _fail(exc) from None
    data = [r.__dict__ for r in rows]
    if as_json:
        typer.echo(json.dumps(data))
        return
    for r in rows:
        typer.echo(f"{r.model_id}\tv{r.version}\tmaster={r.master_key_id}\t{r.created_at}")


@policy_app.command("set")
def policy_set(
    model_id: str = typer.Option(..., "--model-id", help="Model id."),
    file: Path = typer.Option(..., "--file", help="Release policy YAML."),
    version: int | None = typer.Option(None, "--version", help="Only for this version."),
    db: str | None = _DB,
) -> None:
    """Set a model's release policy (appraisal policy + min_version)."""
    from teellm.kbs.policy import ReleasePolicy

    try:
        policy = ReleasePolicy.from_yaml(file)
        broker = _broker(db, None, need_master=False)
        broker.set_policy(model_id, policy, version=version, actor="cli")
        broker.store.close()
    except TeellmError as exc:
        raise _fail(exc) from None
    scope = f"version {version}" if version is not None else "all versions"
    typer.echo(f"policy set for {model_id} ({scope}), min_version {policy.min_version}")


@policy_app.command("show")
def policy_show(
    model_id: str | None = typer.Option(None, "--model-id", help="Only this model."),
    db: str | None = _DB,
) -> None:
    """Print release policies as JSON."""
    from teellm.kbs.store import open_store

    try:
        store = open_store(_db(db))
        rows = [p for p in store.list_policies() if model_id in (None, p.model_id)]
        store.close()
    except TeellmError as exc:
        raise _fail(exc) from None
    out = [
        {"model_id": p.model_id, "version": p.version, "policy": json.loads(p.policy)} for p in rows
    ]
    typer.echo(json.dumps(out, indent=2))


@kbs_app.command("audit")
def audit(
    db: str | None = _DB,
    verify: bool = typer.Option(False, "--verify", help="Check the hash chain; exit 1 if broken."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
    limit: int = typer.Option(100, "--limit", help="Show the last N records."),
) -> None:
    """Show the audit log, or verify its hash chain."""
    from teellm.kbs.store import open_store

    try:
        store = open_store(_db(db))
        if verify:
            report = store.verify_audit()
            store.close()
            if as_json:
                typer.echo(json.dumps(report.to_json()))
            else:
                state = "intact" if report.ok else "BROKEN"
                typer.echo(f"audit chain {state}: {report.count} records")
                typer.echo(f"head {report.head_seq} {report.head_hash}")
                for p in report.problems:
                    typer.echo(f"  {p}")
            raise typer.Exit(0 if report.ok else 1)
        total = store.audit_last_seq()
        records = store.audit_records(after_seq=max(0, total - limit))
        store.close()
    except TeellmError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in records]))
        return
    for r in records:
        what = f"{r.model_id or '-'} v{r.version if r.version is not None else '-'}"
        why = f" {','.join(r.codes)}" if r.codes else ""
        typer.echo(f"{r.seq}\t{r.time}\t{r.event}\t{r.decision}\t{what}\t{r.tee_type or '-'}{why}")


@kbs_app.command("rotate-master-key")
def rotate_master_key(
    new_master_key_file: Path = typer.Option(
        ..., "--new-master-key-file", help="The new master key (see init-master-key)."
    ),
    db: str | None = _DB,
    master_key_file: Path | None = _MASTER,
) -> None:
    """Re-wrap every stored key under a new master key.

    Afterwards run the broker with the new key file; the old one can be destroyed.
    """
    from teellm.kbs.masterkey import MasterKeyRing

    try:
        old = _ring(master_key_file)
        new = MasterKeyRing.from_file(new_master_key_file)
        broker = _broker(db, master_key_file)
        broker.master_keys = old
        n = broker.rotate_master_key(new, actor="cli")
        broker.store.close()
    except TeellmError as exc:
        raise _fail(exc) from None
    typer.echo(f"re-wrapped {n} keys under master key {new.current_id}")


def register(app: typer.Typer) -> None:
    """Add this component's commands to the ``teellm`` app."""
    app.add_typer(kbs_app, name="kbs")
