"""TEE runtimes: produce evidence binding 64 bytes of report data."""

from teellm.attestation.runtime.nitro import NitroRuntime
from teellm.attestation.runtime.select import KINDS, select
from teellm.attestation.runtime.simulated import SimulatedRuntime
from teellm.attestation.runtime.tsm import TsmRuntime

__all__ = ["KINDS", "NitroRuntime", "SimulatedRuntime", "TsmRuntime", "select"]
