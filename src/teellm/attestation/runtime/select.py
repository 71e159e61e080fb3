"""Pick a TEE runtime by name; ``auto`` finds the hardware present or refuses."""

from __future__ import annotations

import os
from pathlib import Path

from teellm.attestation.runtime.nitro import DEFAULT_DEVICE, NitroRuntime
from teellm.attestation.runtime.simulated import SimulatedRuntime
from teellm.attestation.runtime.tsm import DEFAULT_ROOT, TsmRuntime
from teellm.attestation.types import AttestationError, TEERuntime

KINDS = ("auto", "tsm", "nitro", "simulated")


def select(
    kind: str = "auto", *, tsm_root: Path | None = None, nsm_device: Path | None = None
) -> TEERuntime:
    """The runtime named ``kind`` (auto|tsm|nitro|simulated).

    ``auto`` never falls back to simulation: with no TEE hardware it raises
    ``AttestationError(code="no_tee")``; ask for ``simulated`` explicitly.
    Paths default to ``$TEELLM_TSM_ROOT`` / ``$TEELLM_NSM_DEVICE``, else the
    kernel's (/sys/kernel/config/tsm/report, /dev/nsm).
    """
    tsm_root = tsm_root or Path(os.environ.get("TEELLM_TSM_ROOT") or DEFAULT_ROOT)
    nsm_device = nsm_device or Path(os.environ.get("TEELLM_NSM_DEVICE") or DEFAULT_DEVICE)
    if kind == "simulated":
        return SimulatedRuntime()
    if kind == "tsm":
        return TsmRuntime(tsm_root)
    if kind == "nitro":
        return NitroRuntime(nsm_device)
    if kind == "auto":
        if TsmRuntime.available(tsm_root):
            return TsmRuntime(tsm_root)
        if NitroRuntime.available(nsm_device):
            return NitroRuntime(nsm_device)
        raise AttestationError(
            "no TEE found (no configfs-tsm, no /dev/nsm); use --tee simulated for development",
            code="no_tee",
        )
    raise AttestationError(
        f"unknown TEE runtime {kind!r}; use one of {', '.join(KINDS)}", code="usage"
    )
