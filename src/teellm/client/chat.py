"""``teellm chat``: an interactive, streaming chat with a verified server."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from teellm.errors import TeellmError

if TYPE_CHECKING:
    from rich.console import Console

    from teellm.client.client import Client

QUIT = {"/quit", "/exit", "/q"}


def banner(client: Client, console: Console) -> None:
    """Who answers: the verified model and TEE (loudly, when simulated)."""
    report = client.report
    doc = client.session.document
    if report is None or doc is None:
        return
    m = doc.model
    console.print(
        f"[bold green]verified[/] model [bold]{m.id}[/] v{m.version} "
        f"(digest {m.digest[:16]}..., publisher {m.publisher_key_id[:16]}...)"
    )
    tee = doc.tee_type.value
    if doc.simulated:
        console.print(f"TEE: [bold red]{tee} - SIMULATED, no hardware protection[/]")
    else:
        console.print(f"TEE: [bold]{tee}[/]  key id {doc.public_keys.key_id}")
    console.print("end-to-end encrypted; /report shows the checks, /quit leaves.\n")


def run_chat(
    client: Client,
    console: Console,
    *,
    read: Callable[[str], str] = input,
    system: str | None = None,
    params: dict[str, Any] | None = None,
) -> int:
    """Read a line, stream the answer, repeat until EOF or /quit. Returns turns done."""
    history: list[dict[str, Any]] = []
    if system:
        history.append({"role": "system", "content": system})
    banner(client, console)
    turns = 0
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            break
        text = line.strip()
        if not text:
            continue
        if text in QUIT:
            break
        if text == "/report":
            if client.report is not None:
                client.report.render(console)
            continue
        history.append({"role": "user", "content": text})
        parts: list[str] = []
        console.print("ai> ", end="")
        try:
            for chunk in client.stream_chat(history, **(params or {})):
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        parts.append(piece)
                        console.out(piece, end="", highlight=False)
        except TeellmError as exc:
            console.print(f"\n[bold red]error[/] {exc.code}: {exc}")
            history.pop()
            continue
        console.print()
        history.append({"role": "assistant", "content": "".join(parts)})
        turns += 1
    return turns
