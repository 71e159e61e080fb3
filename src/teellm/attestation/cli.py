"""``teellm attest``: verify evidence, produce evidence."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(
    name="attest",
    help="TEE evidence: verify (parse, verify, appraise) and produce.",
    no_args_is_help=True,
)


class EvidenceType(StrEnum):
    tdx = "tdx"
    sgx = "sgx"
    snp = "snp"
    nitro = "nitro"
    nvidia = "nvidia"
    simulated = "simulated"
    auto = "auto"


class RuntimeKind(StrEnum):
    auto = "auto"
    tsm = "tsm"
    nitro = "nitro"
    simulated = "simulated"


def register(app_: typer.Typer) -> None:
    """Add ``teellm attest ...`` to the ``teellm`` app."""
    app_.add_typer(app, name="attest")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {what} {path}: {exc.strerror}") from None


def _parse_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"--at is not ISO 8601: {value!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _hex_arg(value: str, name: str, size: int | None = None) -> bytes:
    try:
        data = bytes.fromhex(value.strip().removeprefix("0x"))
    except ValueError:
        raise typer.BadParameter(f"{name} is not hex") from None
    if size is not None and len(data) > size:
        raise typer.BadParameter(f"{name} is longer than {size} bytes")
    return data


@app.command("verify")
def verify_cmd(
    evidence_file: Path = typer.Argument(..., help="Evidence: raw bytes, hex, base64 or JSON."),
    tee_type: EvidenceType = typer.Option(EvidenceType.auto, "--type", help="Evidence type."),
    collateral: Path | None = typer.Option(None, help="DCAP collateral JSON (TDX/SGX)."),
    vcek: Path | None = typer.Option(None, help="SNP VCEK/VLEK certificate (DER or PEM)."),
    cert_chain: Path | None = typer.Option(None, help="Certificate chain PEM (SNP ASK, GPU)."),
    product: str | None = typer.Option(None, help="SNP product line: milan, genoa, turin."),
    at: str | None = typer.Option(None, help="Verify at this ISO 8601 time (default: now)."),
    policy: Path | None = typer.Option(None, help="Appraisal policy YAML."),
    report_data: str | None = typer.Option(
        None, help="Expected report data (hex); without it the binding is not checked."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Verify EVIDENCE_FILE and appraise it; exit 0 accepted, 1 rejected, 2 usage error."""
    from teellm.attestation.evidence_io import read_evidence
    from teellm.attestation.policy import HARDWARE_TYPES, AppraisalPolicy
    from teellm.attestation.types import AttestationError, Evidence, TeeType
    from teellm.attestation.verify import verify_and_appraise

    now = _parse_at(at)
    expected = _hex_arg(report_data, "--report-data", 64) if report_data is not None else None
    try:
        rules = (
            AppraisalPolicy.from_yaml(policy)
            if policy
            else AppraisalPolicy(allowed_tee_types=list(HARDWARE_TYPES), allow_any_measurement=True)
        )
    except AttestationError as exc:
        raise typer.BadParameter(str(exc)) from None
    if expected is None and rules.require_report_data:
        rules = rules.model_copy(update={"require_report_data": False})
    data = _read(evidence_file, "evidence")
    wanted = None if tee_type is EvidenceType.auto else TeeType(tee_type.value)
    aux: dict[str, bytes] = {}
    if vcek:
        aux["vcek"] = _read(vcek, "VCEK")
    if cert_chain:
        aux["cert_chain"] = _read(cert_chain, "certificate chain")
    if product:
        aux["product"] = product.lower().encode()
    col = _read(collateral, "collateral") if collateral else None
    try:
        evidence = read_evidence(data, wanted)
    except AttestationError as exc:
        _emit_failure(f"{exc.code}: {exc}", as_json)
        raise typer.Exit(1) from None
    evidence = Evidence(evidence.tee_type, evidence.raw, {**evidence.aux, **aux})
    if expected is not None and len(expected) < 64 and evidence.tee_type is not TeeType.NVIDIA:
        expected = expected.ljust(64, b"\0")
    decision = verify_and_appraise(
        evidence, rules, expected_report_data=expected, now=now, collateral=col
    )
    if as_json:
        typer.echo(json.dumps(decision.model_dump(mode="json"), indent=2, sort_keys=True))
    else:
        _print_decision(decision, evidence.tee_type.value)
    raise typer.Exit(0 if decision.accepted else 1)


def _emit_failure(reason: str, as_json: bool) -> None:
    if as_json:
        body = {
            "accepted": False,
            "claims": None,
            "checks": [{"name": "evidence", "passed": False, "reason": reason}],
        }
        typer.echo(json.dumps(body, indent=2, sort_keys=True))
    else:
        typer.echo(f"REJECTED\n  FAIL evidence: {reason}")


def _print_decision(decision: object, tee: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from teellm.attestation.types import Decision

    assert isinstance(decision, Decision)
    console = Console(highlight=False, soft_wrap=True)
    verdict = "[green]ACCEPTED[/]" if decision.accepted else "[red]REJECTED[/]"
    console.print(f"{verdict} ({tee} evidence)")
    if decision.claims is not None:
        claims = decision.claims
        console.print(f"  debug: {claims.debug}  simulated: {claims.simulated}")
        if claims.tcb_status:
            console.print(f"  TCB status: {claims.tcb_status}  advisories: {claims.advisories}")
        if claims.timestamp:
            console.print(f"  evidence time: {claims.timestamp.isoformat()}")
        console.print(f"  report data: {claims.report_data[:128]}")
        for name, value in list(claims.measurements.items())[:24]:
            console.print(f"  {name}: {value}")
    table = Table("check", "result", "reason")
    for check in decision.checks:
        table.add_row(
            check.name, "[green]pass[/]" if check.passed else "[red]FAIL[/]", check.reason
        )
    console.print(table)


@app.command("report")
def report_cmd(
    tee: RuntimeKind = typer.Option(RuntimeKind.auto, "--tee", help="TEE runtime."),
    report_data: str = typer.Option(..., help="Report data, hex (up to 64 bytes, zero-padded)."),
    out: Path | None = typer.Option(None, help="Write the evidence JSON here."),
) -> None:
    """Produce evidence binding REPORT_DATA and print it as Evidence JSON."""
    from teellm.attestation.runtime import select
    from teellm.attestation.types import AttestationError

    data = _hex_arg(report_data, "--report-data", 64).ljust(64, b"\0")
    try:
        runtime = select(tee.value)
        evidence = runtime.evidence(data)
    except AttestationError as exc:
        typer.echo(f"error: {exc.code}: {exc}", err=True)
        raise typer.Exit(1) from None
    text = json.dumps(evidence.to_json(), indent=2, sort_keys=True)
    if out:
        out.write_text(text + "\n")
    else:
        typer.echo(text)
