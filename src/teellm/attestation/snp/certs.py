"""The SNP certificate table (GHCB extended guest request / configfs-tsm auxblob).

A list of (GUID 16 bytes, offset u32, length u32) entries ended by an all-zero
entry; offsets are from the start of the table. GUIDs name the certificate.
"""

from __future__ import annotations

import struct
import uuid

from teellm.attestation.types import AttestationError

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
NAMES = {VCEK_GUID: "vcek", VLEK_GUID: "vlek", ASK_GUID: "ask", ARK_GUID: "ark"}
ENTRY = struct.Struct("<16sII")
MAX_ENTRIES = 64


def _name(guid: bytes) -> str | None:
    # Both byte orders are seen in the wild (RFC 4122 and Microsoft little-endian).
    return NAMES.get(uuid.UUID(bytes=guid)) or NAMES.get(uuid.UUID(bytes_le=guid))


def parse_cert_table(table: bytes) -> dict[str, bytes]:
    """Certificates by name (vcek, vlek, ask, ark); unknown GUIDs are skipped."""
    certs: dict[str, bytes] = {}
    for index in range(MAX_ENTRIES):
        start = index * ENTRY.size
        if start + ENTRY.size > len(table):
            raise AttestationError("certificate table has no terminator", code="certs_malformed")
        guid, offset, length = ENTRY.unpack_from(table, start)
        if guid == bytes(16) and offset == 0 and length == 0:
            return certs
        if offset + length > len(table) or length == 0:
            raise AttestationError("certificate table entry out of range", code="certs_malformed")
        name = _name(guid)
        if name is not None:
            certs[name] = table[offset : offset + length]
    raise AttestationError("certificate table too long", code="certs_malformed")


def build_cert_table(certs: dict[str, bytes]) -> bytes:
    """The inverse of ``parse_cert_table`` (RFC 4122 GUID byte order)."""
    guids = {v: k for k, v in NAMES.items()}
    items = [(guids[name], der) for name, der in certs.items()]
    offset = ENTRY.size * (len(items) + 1)
    head, body = bytearray(), bytearray()
    for guid, der in items:
        head += ENTRY.pack(guid.bytes, offset + len(body), len(der))
        body += der
    head += ENTRY.pack(bytes(16), 0, 0)
    return bytes(head + body)
