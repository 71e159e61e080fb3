"""Protected memory: the protections reported are the ones the kernel applied."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
import torch

from teellm.crypto.secret import SecretBytes
from teellm.memory import ProtectedBuffer, ProtectionReport, protected_secret

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def _vma_flags(addr: int) -> set[str]:
    """VmFlags of the mapping containing ``addr``, from /proc/self/smaps."""
    current = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                current = lo <= addr < hi
            elif current and line.startswith("VmFlags:"):
                return set(line.split()[1:])
    raise AssertionError("mapping not found")


@pytest.mark.parametrize("prefer_secret", [True, False])
def test_buffer_roundtrip_and_close_zeroizes(prefer_secret: bool) -> None:
    buf = ProtectedBuffer(3 * 4096 + 5, prefer_secret=prefer_secret)
    view = buf.view
    assert len(view) == 3 * 4096 + 5 and not view.readonly
    view[:6] = b"secret"
    tensor = torch.frombuffer(view, dtype=torch.uint8)
    assert bytes(tensor[:6].tolist()) == b"secret"
    buf.close()
    buf.close()  # idempotent
    # A stale view reads zeros instead of the plaintext (and does not crash).
    assert bytes(view[:6]) == b"\0" * 6
    assert int(tensor.sum()) == 0
    del view, tensor, buf
    gc.collect()


def test_reported_protections_match_the_kernel() -> None:
    with ProtectedBuffer(64 * 1024) as buf:
        report = buf.protections
        assert isinstance(report, ProtectionReport)
        flags = _vma_flags(buf.address)
        if report.dontdump:
            assert "dd" in flags
        if report.mlock:
            assert "lo" in flags
        if report.memfd_secret:
            # secretmem pages are outside the kernel direct map: not even
            # /proc/self/mem can read them.
            with open("/proc/self/mem", "rb", buffering=0) as mem:
                mem.seek(buf.address)
                with pytest.raises(OSError):
                    mem.read(16)
        else:
            assert report.notes, "a missing protection must be explained"


def test_fallback_buffer_is_locked_dontdump_and_wiped_in_child() -> None:
    with ProtectedBuffer(8192, prefer_secret=False) as buf:
        report = buf.protections
        assert not report.memfd_secret
        assert any("memfd_secret" in n for n in report.notes)
        flags = _vma_flags(buf.address)
        assert report.dontdump and "dd" in flags
        assert report.mlock == ("lo" in flags)
        buf.view[:4] = b"\x01\x02\x03\x04"
        if report.wipe_on_fork:
            pid = os.fork()
            if pid == 0:  # child: the plaintext must be gone
                os._exit(0 if bytes(buf.view[:4]) == b"\0\0\0\0" else 3)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert bytes(buf.view[:4]) == b"\x01\x02\x03\x04"


def test_zero_size_buffer() -> None:
    with ProtectedBuffer(0) as buf:
        assert len(buf.view) == 0


def test_negative_size_rejected() -> None:
    with pytest.raises(ValueError):
        ProtectedBuffer(-1)


def test_protected_secret_is_secretbytes_and_wipes() -> None:
    src = bytearray(b"K" * 32)
    secret = protected_secret(src)
    assert isinstance(secret, SecretBytes)
    assert src == bytearray(32), "the source buffer must be wiped"
    assert secret.bytes() == b"K" * 32 and len(secret) == 32
    assert "K" not in repr(secret) and "K" not in str(secret)
    assert secret == SecretBytes(b"K" * 32)
    view = secret.reveal()
    secret.zeroize()
    assert secret.wiped and bytes(view) == b"\0" * 32
    with pytest.raises(ValueError):
        secret.reveal()


def test_harden_process_in_a_child() -> None:
    code = (
        "import json, resource, ctypes\n"
        "from teellm.memory import harden_process\n"
        "r = harden_process()\n"
        "libc = ctypes.CDLL(None)\n"
        "print(json.dumps({'report': r.model_dump(), 'dumpable': libc.prctl(3, 0, 0, 0, 0),"
        " 'core': resource.getrlimit(resource.RLIMIT_CORE)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import json

    data = json.loads(out.stdout)
    assert data["dumpable"] == 0 and data["core"] == [0, 0]
    assert data["report"]["non_dumpable"] and data["report"]["core_limit_zero"]


def test_report_merge_is_a_logical_and() -> None:
    a = ProtectionReport(memfd_secret=True, mlock=True, dontdump=True, notes=["x"])
    b = ProtectionReport(memfd_secret=False, mlock=True, dontdump=True, notes=["y"])
    m = a.merged(b)
    assert (m.memfd_secret, m.mlock, m.dontdump) == (False, True, True)
    assert m.notes == ["x", "y"]


def test_lazy_locking_reports_only_after_finish() -> None:
    with ProtectedBuffer(64 * 1024, prefer_secret=False, lock_lazily=True) as buf:
        assert not buf.protections.mlock
        ok = buf.lock_range(4096 + 10, 100)
        buf.view[4096 + 10 : 4096 + 110] = b"x" * 100
        buf.finish_lock()
        report = buf.protections
        assert report.mlock == ("lo" in _vma_flags(buf.address))
        if ok:
            assert report.mlock
        else:
            assert any("mlock" in n for n in report.notes)


def test_protected_secret_constructors() -> None:
    from teellm.memory import ProtectedSecret

    buf = bytearray(b"z" * 16)
    s = ProtectedSecret.from_buffer(buf)
    assert buf == bytearray(16) and s.bytes() == b"z" * 16
    r = ProtectedSecret.random(32)
    assert isinstance(r, ProtectedSecret) and len(r) == 32 and r.protections.dontdump
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(r)
