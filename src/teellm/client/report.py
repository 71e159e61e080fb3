"""Human-readable rendering of a :class:`~teellm.server.document.VerificationReport`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from teellm.server.document import VerificationReport


def render_report(report: VerificationReport, console: Console | None = None) -> None:
    """Print every check (pass/fail, reason, measured value) and the verdict."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = console or Console()
    title = f"Verification of {report.url}" if report.url else "Server verification"
    table = Table(title=title, show_lines=False, expand=False)
    table.add_column("check", style="bold")
    table.add_column("result")
    table.add_column("reason")
    table.add_column("measured", overflow="fold")
    for check in report.checks:
        result = Text("PASS", style="green") if check.passed else Text("FAIL", style="bold red")
        table.add_row(check.name, result, check.reason, check.measured or "")
    out.print(table)
    if report.model is not None:
        m = report.model
        out.print(
            f"model: {m.id} v{m.version}  digest {m.digest[:16]}...  "
            f"publisher {m.publisher_key_id[:16]}..."
        )
    tee = (report.tee_type or "?") + (
        " (SIMULATED: no hardware protection)" if report.simulated else ""
    )
    out.print(f"TEE: {tee}   key id: {report.key_id}")
    for reg, value in sorted(report.measurements.items()):
        out.print(f"  {reg}: {value}")
    if report.accepted:
        out.print(Text("VERIFIED: every check passed", style="bold green"))
    else:
        out.print(Text(f"REFUSED: {len(report.failures)} check(s) failed", style="bold red"))
