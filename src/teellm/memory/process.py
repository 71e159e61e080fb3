"""Process-wide hardening: no core dumps, no ptrace attach by other users."""

from __future__ import annotations

import contextlib
import resource

from teellm.memory import _libc
from teellm.memory.report import ProtectionReport


def process_state() -> ProtectionReport:
    """Observe (without changing) the process-level protections."""
    report = ProtectionReport()
    lib = _libc.libc
    if lib is not None:
        report.non_dumpable = lib.prctl(_libc.PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
    else:
        report.notes.append("prctl unavailable on this platform")
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        report.core_limit_zero = soft == 0 and hard == 0
    return report


def harden_process() -> ProtectionReport:
    """Make the process non-dumpable (PR_SET_DUMPABLE 0) and set RLIMIT_CORE to 0.

    Returns the process state afterwards together with what a
    :class:`~teellm.memory.ProtectedBuffer` gets on this machine, so the report can
    be published as is. Failures are reported in ``notes``, never raised.
    """
    from teellm.memory.protected import probe_buffer_protections

    notes: list[str] = []
    lib = _libc.libc
    if lib is not None and lib.prctl(_libc.PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        notes.append(f"PR_SET_DUMPABLE failed: {_libc.errno_text()}")
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:
        notes.append(f"RLIMIT_CORE=0 failed: {type(exc).__name__}")
    state = process_state()
    buffers = probe_buffer_protections()
    return ProtectionReport(
        memfd_secret=buffers.memfd_secret,
        mlock=buffers.mlock,
        dontdump=buffers.dontdump,
        wipe_on_fork=buffers.wipe_on_fork,
        non_dumpable=state.non_dumpable,
        core_limit_zero=state.core_limit_zero,
        notes=[*notes, *state.notes, *buffers.notes],
    )
