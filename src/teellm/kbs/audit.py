"""The audit log's hash chain: canonical records, each hash covering its predecessor.

hash_n = SHA-256("teellm/kbs/audit/v1" 0x00 || prev_hash_n (32 bytes) || canonical JSON of record_n)
where canonical JSON has sorted keys, no whitespace, UTF-8. The first record's
prev hash is 32 zero bytes. The store also keeps the chain head (last seq and
hash) so that cutting records off the end is detected too; to detect a rewrite
of the whole chain, copy the head printed by ``teellm kbs audit --verify`` to a
place the database administrator cannot write.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

GENESIS = "00" * 32
_DOMAIN = b"teellm/kbs/audit/v1\x00"


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, compact separators, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: str, body: bytes) -> str:
    """The hash of one audit row given its predecessor's hash (hex) and its canonical body."""
    h = hashlib.sha256(_DOMAIN)
    h.update(bytes.fromhex(prev_hash))
    h.update(body)
    return h.hexdigest()


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class AuditEvent(BaseModel):
    """What one audit record says. Never holds secrets: no keys, no nonces' purpose beyond id."""

    event: str  # "challenge" | "release" | "denial" | "admin"
    decision: str = ""  # "issued" | "released" | "denied" | admin action
    model_id: str | None = None
    version: int | None = None
    tee_type: str | None = None
    request_id: str | None = None
    client: str | None = None
    measurements: dict[str, str] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)
    codes: list[str] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditRecord(AuditEvent):
    """An audit event as stored: with its position, time and chain hashes."""

    seq: int
    time: str
    prev_hash: str
    hash: str


@dataclass
class AuditReport:
    """Result of walking the chain: ok, how many rows, the head, and every problem found."""

    ok: bool
    count: int
    head_seq: int
    head_hash: str
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "count": self.count,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "problems": self.problems,
        }


def record_body(seq: int, time: str, event: AuditEvent) -> bytes:
    """Canonical bytes of a record: its event fields plus position and time."""
    data = event.model_dump(mode="json")
    data["seq"] = seq
    data["time"] = time
    return canonical_json(data)


def verify_rows(
    rows: list[tuple[int, str, str, str, str, str]], head: tuple[int, str] | None
) -> AuditReport:
    """Check rows ``(seq, time, event, body, prev_hash, hash)`` in seq order against the head."""
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    for seq, time, event, body, prev_hash, own_hash in rows:
        if seq != expected_seq:
            problems.append(f"row {seq}: expected seq {expected_seq} (row missing or inserted)")
        if prev_hash != prev:
            problems.append(f"row {seq}: prev_hash does not match the previous row's hash")
        try:
            intact = chain_hash(prev_hash, body.encode()) == own_hash
        except ValueError:  # a prev_hash that is not hex: edited, to be reported, not raised
            intact = False
        if not intact:
            problems.append(f"row {seq}: hash does not match its content (row edited)")
        try:
            parsed = json.loads(body)
            if (
                parsed.get("seq") != seq
                or parsed.get("time") != time
                or parsed.get("event") != event
            ):
                problems.append(f"row {seq}: indexed columns disagree with the hashed body")
        except (ValueError, AttributeError):
            problems.append(f"row {seq}: body is not valid JSON")
        prev = own_hash
        expected_seq = seq + 1
    last_seq = rows[-1][0] if rows else 0
    last_hash = rows[-1][5] if rows else GENESIS
    if head is None:
        if rows:
            problems.append("chain head record is missing")
    elif head != (last_seq, last_hash):
        problems.append(
            f"chain head says seq {head[0]} but the last row is {last_seq} (rows cut off or added)"
        )
    return AuditReport(
        ok=not problems, count=len(rows), head_seq=last_seq, head_hash=last_hash, problems=problems
    )
