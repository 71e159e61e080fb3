"""``teellm serve`` (the confidential server) and ``teellm tenant`` (access policy)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

import typer

_TEE_HELP = "TEE runtime: auto (refuses without TEE hardware), tsm, nitro, or simulated."


def serve(
    bundle: Path = typer.Option(..., "--bundle", help="Sealed model bundle directory."),
    trusted_publisher: list[Path] = typer.Option(
        ..., "--trusted-publisher", help="Publisher public key (PEM); repeatable."
    ),
    access: Path = typer.Option(
        ..., "--access", help="Access policy YAML (tenants, hashed tokens, limits)."
    ),
    kbs: str = typer.Option(..., "--kbs", help="Key broker URL that releases the content key."),
    tee: str = typer.Option("auto", "--tee", help=_TEE_HELP),
    plain: bool = typer.Option(
        False,
        "--plain",
        help="Also accept requests without end-to-end encryption (the attestation "
        "document says so; clients refuse it unless their policy allows it).",
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    precision: str = typer.Option("bfloat16", "--precision", help="float32, bfloat16 or int8."),
    max_input_length: int = typer.Option(4096, "--max-input-length", min=1),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1024),
    min_version: int | None = typer.Option(None, "--min-version", help="Refuse older bundles."),
    kem: str = typer.Option("mlkem768-x25519", "--kem", help="mlkem768-x25519 or x25519."),
    attestation_rpm: int = typer.Option(
        120,
        "--attestation-rpm",
        min=1,
        help="Fresh attestation documents (with nonce) per minute and client address.",
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log method, path, status."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run the confidential OpenAI-compatible server."""
    import threading

    import uvicorn

    from teellm.attestation.runtime import select
    from teellm.crypto.hpke import Kem
    from teellm.errors import TeellmError
    from teellm.server.access import AccessPolicy
    from teellm.server.app import StartingApp, create_app
    from teellm.server.boot import BootedServer, BootOptions, boot
    from teellm.settings import ModelSettings

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = ModelSettings(
            batch_size=batch_size,
            precision=precision,  # type: ignore[arg-type]
            max_input_length=max_input_length,
        )
        opts = BootOptions(
            bundle=bundle,
            trusted_publishers=list(trusted_publisher),
            access=AccessPolicy.from_yaml(access),
            tee=tee,
            kbs_url=kbs,
            plain_mode=plain,
            settings=settings,
            kem=Kem(kem),
            max_body_bytes=max_body_bytes,
            min_version=min_version,
            attestation_per_minute=attestation_rpm,
        )
        runtime = select(tee)  # refuse at once outside a TEE, before listening
    except (TeellmError, ValueError, OSError) as exc:
        _refuse(exc)
    # Listen from the start (/healthz 200, /readyz 503) while the model loads beside it.
    starting = StartingApp()
    server = uvicorn.Server(
        uvicorn.Config(
            starting,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )
    outcome: dict[str, BootedServer | BaseException] = {}

    def run_boot() -> None:
        try:
            booted = boot(opts, runtime=runtime)
        except Exception as exc:
            outcome["error"] = exc
            server.should_exit = True
            return
        outcome["booted"] = booted
        starting.ready(create_app(booted.context))

    booter = threading.Thread(target=run_boot, name="boot", daemon=True)
    booter.start()
    try:
        server.run()
    finally:
        booted = outcome.get("booted")
        if isinstance(booted, BootedServer):
            booted.close()
    error = outcome.get("error")
    if isinstance(error, BaseException):
        _refuse(error)


def _refuse(exc: BaseException) -> NoReturn:
    code = getattr(exc, "code", type(exc).__name__)
    typer.echo(f"teellm serve: refused to start ({code}): {exc}", err=True)
    raise typer.Exit(2)


tenant_app = typer.Typer(help="Manage the access policy file of a server.", no_args_is_help=True)


@tenant_app.command("add")
def tenant_add(
    policy_file: Path = typer.Argument(..., help="Access policy YAML (created if missing)."),
    name: str = typer.Option(..., "--name"),
    model: list[str] = typer.Option(..., "--model", help="Model id the tenant may use; '*' all."),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1),
    max_input_length: int | None = typer.Option(None, "--max-input-length", min=1),
    rpm: int = typer.Option(60, "--rpm", min=1, help="Requests per minute."),
) -> None:
    """Add a tenant with a fresh API token; the token is printed once, only its hash stored."""
    from teellm.server.access import AccessPolicy, Tenant, new_token

    policy = AccessPolicy.from_yaml(policy_file) if policy_file.exists() else AccessPolicy()
    token, token_hash = new_token()
    tenant = Tenant(
        name=name,
        token_hashes=[token_hash],
        models=list(model),
        max_tokens=max_tokens,
        max_input_length=max_input_length,
        requests_per_minute=rpm,
    )
    policy = AccessPolicy(tenants=[t for t in policy.tenants if t.name != name] + [tenant])
    policy_file.write_text(policy.to_yaml())
    policy_file.chmod(0o600)
    sys.stdout.write(token + "\n")


def register(app: typer.Typer) -> None:
    """Add this component's commands to the ``teellm`` app."""
    app.command("serve")(serve)
    app.add_typer(tenant_app, name="tenant")
