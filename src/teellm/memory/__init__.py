"""Protected memory: memfd_secret, mlock, MADV_DONTDUMP, non-dumpable process."""

from teellm.memory.process import harden_process, process_state
from teellm.memory.protected import ProtectedBuffer, ProtectedMemoryError, probe_buffer_protections
from teellm.memory.report import ProtectionReport
from teellm.memory.secret import ProtectedSecret, protected_secret

__all__ = [
    "ProtectedBuffer",
    "ProtectedMemoryError",
    "ProtectedSecret",
    "ProtectionReport",
    "harden_process",
    "probe_buffer_protections",
    "process_state",
    "protected_secret",
]
