"""A software TEE for development and tests. It protects nothing."""

from __future__ import annotations

import logging
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from teellm.attestation.simulated import DEFAULT_MEASUREMENT, WARNING_TEXT, encode_body
from teellm.attestation.types import REPORT_DATA_SIZE, AttestationError, Evidence, TeeType

log = logging.getLogger("teellm.attestation")


class SimulatedRuntime:
    """Signs evidence with a local Ed25519 key; every verifier rejects it by default.

    A loud warning is logged when the runtime is created and on every evidence call.
    """

    def __init__(
        self,
        signing_key: Ed25519PrivateKey | None = None,
        *,
        measurement: bytes = DEFAULT_MEASUREMENT,
    ) -> None:
        self._key = signing_key or Ed25519PrivateKey.generate()
        self._measurement = bytes(measurement)
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        log.warning("%s (runtime created)", WARNING_TEXT)

    @property
    def kind(self) -> TeeType:
        return TeeType.SIMULATED

    @property
    def description(self) -> str:
        return "simulated TEE (software only, NOT confidential)"

    def evidence(self, report_data: bytes) -> Evidence:
        """Simulated evidence binding ``report_data`` (64 bytes)."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise AttestationError("report data must be 64 bytes", code="report_data_size")
        log.warning("%s (evidence produced)", WARNING_TEXT)
        body = encode_body(
            report_data=bytes(report_data),
            measurement=self._measurement,
            timestamp_ms=int(time.time() * 1000),
            public_key=self.public_key,
        )
        return Evidence(TeeType.SIMULATED, body, {"signature": self._key.sign(body)})
