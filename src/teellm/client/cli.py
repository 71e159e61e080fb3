"""Client commands: ``teellm verify-server``, ``teellm proxy``, ``teellm chat``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

API_KEY_ENV = "TEELLM_API_KEY"

_POLICY = typer.Option(
    ..., "--policy", "-p", help="Client policy YAML (TEE, measurements, model, publisher)."
)
_API_KEY = typer.Option(
    None, "--api-key", help=f"API token for the server (default: env {API_KEY_ENV})."
)


def _api_key(value: str | None) -> str | None:
    return value or os.environ.get(API_KEY_ENV) or None


def verify_server(
    url: str = typer.Argument(..., help="Server base URL, e.g. https://llm.example.com"),
    policy: Path = _POLICY,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Verify a server's attestation under a policy and print every check."""
    import httpx
    from rich.console import Console

    from teellm.client.transport import ServerSession
    from teellm.errors import TeellmError
    from teellm.server.document import VerificationFailed, VerificationReport

    report: VerificationReport | None
    try:
        session = ServerSession(url, policy)
        with httpx.HTTPTransport() as transport:
            report = session.verify_with(transport)
    except VerificationFailed as exc:
        report = exc.report
    except TeellmError as exc:
        typer.echo(f"error: {exc.code}: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(report.to_json())
    else:
        report.render(Console())
    raise typer.Exit(0 if report.accepted else 1)


def proxy(
    url: str = typer.Option(..., "--url", help="Upstream teellm server base URL."),
    policy: Path = _POLICY,
    port: int = typer.Option(8080, "--port", help="Local port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Loopback address to listen on."),
    api_key: str | None = _API_KEY,
) -> None:
    """Local OpenAI-compatible endpoint on loopback that verifies and encrypts upstream."""
    from teellm.client.proxy import serve
    from teellm.errors import TeellmError
    from teellm.server.document import VerificationFailed

    try:
        typer.echo(f"verifying {url} ...", err=True)
        serve(url, policy, host=host, port=port, api_key=_api_key(api_key))
    except VerificationFailed as exc:
        from rich.console import Console

        exc.report.render(Console(stderr=True))
        typer.echo("refusing to start: the server failed verification", err=True)
        raise typer.Exit(1) from None
    except TeellmError as exc:
        typer.echo(f"error: {exc.code}: {exc}", err=True)
        raise typer.Exit(2) from None


def chat(
    url: str = typer.Argument(..., help="Server base URL."),
    policy: Path = _POLICY,
    api_key: str | None = _API_KEY,
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Per answer."),
    temperature: float = typer.Option(0.0, "--temperature"),
) -> None:
    """Interactive streaming chat with a verified server (end-to-end encrypted)."""
    from rich.console import Console

    from teellm.client.chat import run_chat
    from teellm.client.client import Client
    from teellm.errors import TeellmError
    from teellm.server.document import VerificationFailed

    console = Console()
    try:
        client = Client(url, policy, api_key=_api_key(api_key))
    except VerificationFailed as exc:
        exc.report.render(console)
        typer.echo("refusing to chat: the server failed verification", err=True)
        raise typer.Exit(1) from None
    except TeellmError as exc:
        typer.echo(f"error: {exc.code}: {exc}", err=True)
        raise typer.Exit(2) from None
    with client:
        run_chat(
            client,
            console,
            system=system,
            params={"max_tokens": max_tokens, "temperature": temperature},
        )


def register(app: typer.Typer) -> None:
    """Add the client commands to the ``teellm`` app."""
    app.command("verify-server")(verify_server)
    app.command("proxy")(proxy)
    app.command("chat")(chat)
