"""The one command-line entry point, ``teellm``.

Each component registers its own commands (``register(app)`` in its ``cli``
module); heavy imports (torch, the server) happen inside the commands so that
``teellm --help`` stays fast.
"""

from __future__ import annotations

import typer

from teellm import __version__
from teellm.attestation import cli as attestation_cli
from teellm.bundle import cli as bundle_cli
from teellm.client import cli as client_cli
from teellm.engine import cli as engine_cli
from teellm.kbs import cli as kbs_cli
from teellm.server import cli as server_cli

app = typer.Typer(
    name="teellm",
    help="Private LLM inference inside Trusted Execution Environments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"teellm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Private LLM inference inside Trusted Execution Environments."""


for _component in (bundle_cli, engine_cli, attestation_cli, kbs_cli, server_cli, client_cli):
    _component.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
