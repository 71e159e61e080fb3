"""Composite CPU + GPU evidence.

The GPU report's SPDM requester nonce is ``gpu_nonce(cpu_report_data)``
(SHA-256 over a domain tag and the CPU report data), and the GPU evidence rides
inside the CPU evidence as ``aux["gpu"]``. The verifier recomputes the nonce
from the verified CPU report data, so a GPU report from another session or
machine cannot be spliced in.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from teellm.attestation.policy import gpu_nonce
from teellm.attestation.types import REPORT_DATA_SIZE, AttestationError, Evidence, TeeType

__all__ = ["CompositeRuntime", "composite_evidence", "gpu_nonce"]


def composite_evidence(cpu: Evidence, gpu: Evidence) -> Evidence:
    """CPU evidence carrying ``gpu`` (an NVIDIA SPDM report) as ``aux["gpu"]``."""
    if gpu.tee_type is not TeeType.NVIDIA:
        raise AttestationError("GPU evidence must be NVIDIA", code="gpu_malformed")
    blob = json.dumps(gpu.to_json(), sort_keys=True).encode()
    return Evidence(cpu.tee_type, cpu.raw, {**cpu.aux, "gpu": blob})


class CompositeRuntime:
    """A CPU runtime plus a GPU evidence source that takes a 32-byte SPDM nonce.

    ``gpu`` is whatever talks to the GPU (for example a wrapper around NVIDIA's
    attestation SDK) and returns its GET_MEASUREMENTS request/response and chain.
    """

    def __init__(self, cpu: object, gpu: Callable[[bytes], Evidence]) -> None:
        from teellm.attestation.types import TEERuntime

        if not isinstance(cpu, TEERuntime):
            raise TypeError("cpu must be a TEERuntime")
        self._cpu = cpu
        self._gpu = gpu

    @property
    def kind(self) -> TeeType:
        return self._cpu.kind

    @property
    def description(self) -> str:
        return f"{self._cpu.description} + NVIDIA GPU"

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_SIZE:
            raise AttestationError("report data must be 64 bytes", code="report_data_size")
        cpu = self._cpu.evidence(report_data)
        return composite_evidence(cpu, self._gpu(gpu_nonce(report_data)))
