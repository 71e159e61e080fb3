"""Evidence from the Linux configfs-tsm interface (TDX quotes, SEV-SNP reports).

Kernel ABI (Documentation/ABI/testing/configfs-tsm): mkdir a report directory
under /sys/kernel/config/tsm/report, write 64 bytes to ``inblob``, read
``outblob`` (and ``auxblob``: the SNP certificate table), and compare
``generation`` before and after: any other writer in between bumps it, and
then the blob may not be ours.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from teellm.attestation.types import REPORT_DATA_SIZE, AttestationError, Evidence, TeeType

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
PROVIDERS = {"tdx_guest": TeeType.TDX, "sev_guest": TeeType.SNP}
MAX_BLOB = 1 << 20
ATTR_WAIT_S = 2.0  # configfs creates attributes with the directory; allow a short lag


class TsmRuntime:
    """A TEE runtime over configfs-tsm; ``kind`` comes from the ``provider`` attribute."""

    def __init__(self, root: Path = DEFAULT_ROOT, *, privlevel: int | None = None) -> None:
        self.root = Path(root)
        self.privlevel = privlevel
        self._kind: TeeType | None = None

    @staticmethod
    def available(root: Path = DEFAULT_ROOT) -> bool:
        """True when the configfs-tsm report directory exists and is writable."""
        return root.is_dir() and os.access(root, os.W_OK)

    @property
    def kind(self) -> TeeType:
        if self._kind is None:
            self._probe()
        assert self._kind is not None
        return self._kind

    @property
    def description(self) -> str:
        return f"configfs-tsm at {self.root}"

    def _probe(self) -> None:
        """Create and remove one report directory to learn the provider."""
        entry = self._mkdir()
        try:
            self._kind = self._provider(entry)
        finally:
            self._rmdir(entry)

    def _mkdir(self) -> Path:
        entry = self.root / f"teellm-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            entry.mkdir()
        except OSError as exc:
            raise AttestationError(
                f"cannot create a configfs-tsm report ({exc.strerror})", code="tsm_unavailable"
            ) from None
        deadline = time.monotonic() + ATTR_WAIT_S
        while not (entry / "inblob").exists():
            if time.monotonic() > deadline:
                self._rmdir(entry)
                raise AttestationError("configfs-tsm report has no inblob", code="tsm_unavailable")
            time.sleep(0.001)
        return entry

    @staticmethod
    def _rmdir(entry: Path) -> None:
        # best effort; the kernel frees the report with the directory
        with contextlib.suppress(OSError):
            entry.rmdir()

    @staticmethod
    def _read(path: Path) -> bytes:
        with open(path, "rb") as f:
            data = f.read(MAX_BLOB + 1)
        if len(data) > MAX_BLOB:
            raise AttestationError(f"configfs-tsm {path.name} too large", code="tsm_failed")
        return data

    def _generation(self, entry: Path) -> int:
        try:
            return int(self._read(entry / "generation").strip())
        except ValueError:
            raise AttestationError(
                "configfs-tsm generation unreadable", code="tsm_failed"
            ) from None

    def _provider(self, entry: Path) -> TeeType:
        name = self._read(entry / "provider").decode(errors="replace").strip()
        if name not in PROVIDERS:
            raise AttestationError(f"unknown configfs-tsm provider {name!r}", code="tsm_failed")
        return PROVIDERS[name]

    def evidence(self, report_data: bytes) -> Evidence:
        """A fresh quote/report binding ``report_data`` (64 bytes)."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise AttestationError("report data must be 64 bytes", code="report_data_size")
        entry = self._mkdir()
        try:
            kind = self._provider(entry)
            self._kind = kind
            if self.privlevel is not None and (entry / "privlevel").exists():
                (entry / "privlevel").write_text(f"{self.privlevel}\n")
            before = self._generation(entry)
            with open(entry / "inblob", "wb") as f:
                f.write(bytes(report_data))
            try:
                outblob = self._read(entry / "outblob")
                aux = self._read(entry / "auxblob") if (entry / "auxblob").exists() else b""
            except OSError as exc:
                raise AttestationError(
                    f"configfs-tsm report failed ({exc.strerror})", code="tsm_failed"
                ) from None
            after = self._generation(entry)
            if after != before + 1:
                raise AttestationError(
                    "configfs-tsm report changed by a concurrent writer", code="tsm_race"
                )
        finally:
            self._rmdir(entry)
        if not outblob:
            raise AttestationError("configfs-tsm returned an empty report", code="tsm_failed")
        return Evidence(kind, outblob, {"certs": aux} if aux else {})
