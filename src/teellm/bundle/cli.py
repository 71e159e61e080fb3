"""Command-line commands of this component."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this component's commands to the ``teellm`` app."""
