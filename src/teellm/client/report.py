"""Human-readable rendering of a :class:`~teellm.server.document.VerificationReport`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from teellm.server.document import VerificationReport


_CONTROL = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)], "\N{REPLACEMENT CHARACTER}")


def plain(value: object) -> Text:
    """Server-supplied text as inert terminal output: no rich markup, no control bytes.

    Reasons and measured values come from the server's document; an escape sequence
    or markup in them could otherwise restyle or hide the verdict printed after them.
    """
    from rich.text import Text

    return Text(str(value).translate(_CONTROL))


def render_report(report: VerificationReport, console: Console | None = None) -> None:
    """Print every check (pass/fail, reason, measured value) and the verdict."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = console or Console()
    title = f"Verification of {report.url}" if report.url else "Server verification"
    table = Table(title=plain(title), show_lines=False, expand=False)
    table.add_column("check", style="bold")
    table.add_column("result")
    table.add_column("reason")
    table.add_column("measured", overflow="fold")
    for check in report.checks:
        result = Text("PASS", style="green") if check.passed else Text("FAIL", style="bold red")
        table.add_row(plain(check.name), result, plain(check.reason), plain(check.measured or ""))
    out.print(table)
    if report.model is not None:
        m = report.model
        out.print(
            plain(
                f"model: {m.id} v{m.version}  digest {m.digest[:16]}...  "
                f"publisher {m.publisher_key_id[:16]}..."
            )
        )
    tee = (report.tee_type or "?") + (
        " (SIMULATED: no hardware protection)" if report.simulated else ""
    )
    out.print(plain(f"TEE: {tee}   key id: {report.key_id}"))
    for reg, value in sorted(report.measurements.items()):
        out.print(plain(f"  {reg}: {value}"))
    if report.accepted:
        out.print(Text("VERIFIED: every check passed", style="bold green"))
    else:
        out.print(Text(f"REFUSED: {len(report.failures)} check(s) failed", style="bold red"))
