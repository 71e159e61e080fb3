"""What protections are in force, stated exactly; it goes into attestation documents."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ProtectionReport(BaseModel):
    """Which memory and process protections hold for a buffer (or the process).

    Every field is a fact observed at run time, not a wish: ``mlock`` is True only if
    the kernel accepted the lock. ``notes`` says why a protection is missing.
    """

    memfd_secret: bool = False
    mlock: bool = False
    dontdump: bool = False
    wipe_on_fork: bool = False
    non_dumpable: bool = False
    core_limit_zero: bool = False
    notes: list[str] = Field(default_factory=list)

    def merged(self, other: ProtectionReport) -> ProtectionReport:
        """The protections that hold for both (logical AND), with both sets of notes."""
        notes = list(dict.fromkeys([*self.notes, *other.notes]))
        return ProtectionReport(
            memfd_secret=self.memfd_secret and other.memfd_secret,
            mlock=self.mlock and other.mlock,
            dontdump=self.dontdump and other.dontdump,
            wipe_on_fork=self.wipe_on_fork and other.wipe_on_fork,
            non_dumpable=self.non_dumpable and other.non_dumpable,
            core_limit_zero=self.core_limit_zero and other.core_limit_zero,
            notes=notes,
        )
