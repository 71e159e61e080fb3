"""ProtectedBuffer: memory for plaintext weights and keys that never reaches disk.

Preferred backing is ``memfd_secret(2)``: the pages are removed from the kernel's
direct map (invisible even to the kernel, let alone other processes), never swapped
and never dumped. Where the kernel lacks it, an anonymous private mapping is locked
(``mlock``) and excluded from core dumps (``MADV_DONTDUMP``) and from forked
children (``MADV_WIPEONFORK``). Each step that fails is recorded, not raised:
loading still works and the report says exactly what holds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

from teellm.closing import Closing
from teellm.memory import _libc
from teellm.memory.process import process_state
from teellm.memory.report import ProtectionReport


class ProtectedMemoryError(MemoryError):
    """The kernel refused to map memory at all (not merely a missing protection)."""


def _memfd_secret_fd() -> tuple[int, str | None]:
    lib = _libc.libc
    if lib is None:
        return -1, "memfd_secret needs Linux"
    if os.environ.get("TEELLM_DISABLE_MEMFD_SECRET") == "1":
        return -1, "memfd_secret disabled by TEELLM_DISABLE_MEMFD_SECRET"
    fd = lib.syscall(_libc.SYS_MEMFD_SECRET, 0)
    if fd < 0:
        return -1, f"memfd_secret unavailable: {_libc.errno_text()}"
    return int(fd), None


class ProtectedBuffer(Closing):
    """``size`` writable bytes in protected memory; ``close()`` zeroizes and releases.

    ``view`` is a writable memoryview; tensors and memoryviews derived from it keep
    the mapping alive, and after ``close()`` they read zeros instead of crashing the
    process (the secret pages are replaced by an empty read-only mapping, which is
    unmapped once nothing refers to it any more).

    ``lock_lazily=True`` (anonymous memory only) defers ``mlock``: the writer calls
    :meth:`lock_range` on each region *before* writing plaintext there (so parallel
    writers populate pages in parallel instead of one thread populating all of it
    up front) and :meth:`finish_lock` at the end, which sets ``mlock`` in the report.
    """

    def __init__(self, size: int, *, prefer_secret: bool = True, lock_lazily: bool = False) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        lib = _libc.libc
        if lib is None:
            raise ProtectedMemoryError("protected memory needs Linux")
        self.size = size
        page = _libc.page_size()
        self._mapped = max(page, -(-size // page) * page)
        self._closed = False
        self._addr = 0
        self._lock_pending = False
        notes: list[str] = []
        report = ProtectionReport()

        fd, why = _memfd_secret_fd() if prefer_secret else (-1, "memfd_secret not requested")
        if fd >= 0:
            try:
                os.ftruncate(fd, self._mapped)
                addr = lib.mmap(
                    None, self._mapped, _libc.PROT_READ | _libc.PROT_WRITE, _libc.MAP_SHARED, fd, 0
                )
            finally:
                os.close(fd)  # the mapping keeps the secret memory alive
            if addr in (None, _libc.MAP_FAILED):
                notes.append(f"memfd_secret mmap failed: {_libc.errno_text()}")
            else:
                self._addr = int(addr)
                # secretmem pages are locked and excluded from dumps by the kernel itself.
                report.memfd_secret = report.mlock = report.dontdump = True
        elif why:
            notes.append(why)

        if not self._addr:
            addr = lib.mmap(
                None,
                self._mapped,
                _libc.PROT_READ | _libc.PROT_WRITE,
                _libc.MAP_PRIVATE | _libc.MAP_ANONYMOUS,
                -1,
                0,
            )
            if addr in (None, _libc.MAP_FAILED):
                raise ProtectedMemoryError(f"mmap of {size} bytes failed: {_libc.errno_text()}")
            self._addr = int(addr)
            if lib.madvise(self._addr, self._mapped, _libc.MADV_DONTDUMP) == 0:
                report.dontdump = True
            else:
                notes.append(f"MADV_DONTDUMP failed: {_libc.errno_text()}")
            if lock_lazily:
                self._lock_pending = True
            elif lib.mlock(self._addr, self._mapped) == 0:
                report.mlock = True
            else:
                notes.append(f"mlock failed ({_libc.errno_text()}); pages may be swapped")
        # A forked child must not inherit plaintext: private pages are wiped in the
        # child, shared (secretmem) ones are not mapped there at all.
        advice = _libc.MADV_DONTFORK if report.memfd_secret else _libc.MADV_WIPEONFORK
        if lib.madvise(self._addr, self._mapped, advice) == 0:
            report.wipe_on_fork = True
        else:
            notes.append(f"fork exclusion failed: {_libc.errno_text()}")
        report.notes = notes
        self._report = report

        array = (ctypes.c_char * size).from_address(self._addr)
        # Every view (and torch tensor) made from ``view`` holds ``array``; ``array``
        # holds us, so __del__ (the real munmap) runs only when no view is left.
        array._owner = self  # type: ignore[attr-defined]
        self._view = memoryview(array).cast("B")

    def lock_range(self, offset: int, length: int) -> bool:
        """Lock the pages under ``[offset, offset+length)`` before plaintext goes there."""
        if not self._lock_pending or length <= 0:
            return True
        lib = _libc.libc
        assert lib is not None
        page = _libc.page_size()
        start = offset // page * page
        end = min(self._mapped, -(-(offset + length) // page) * page)
        return bool(lib.mlock(self._addr + start, end - start) == 0)

    def finish_lock(self) -> None:
        """Lock the whole buffer (cheap for pages already locked) and record the result."""
        if not self._lock_pending:
            return
        self._lock_pending = False
        lib = _libc.libc
        assert lib is not None
        if lib.mlock(self._addr, self._mapped) == 0:
            self._report.mlock = True
        else:
            self._report.notes.append(f"mlock failed ({_libc.errno_text()}); pages may be swapped")

    @property
    def view(self) -> memoryview:
        """The whole buffer, writable (reads zeros after :meth:`close`)."""
        return self._view

    @property
    def address(self) -> int:
        return self._addr

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def protections(self) -> ProtectionReport:
        """Memory protections of this buffer plus the current process state."""
        state = process_state()
        return self._report.model_copy(
            update={
                "non_dumpable": state.non_dumpable,
                "core_limit_zero": state.core_limit_zero,
                "notes": [*self._report.notes, *state.notes],
            }
        )

    def close(self) -> None:
        """Zeroize, then swap the pages for an empty read-only mapping (idempotent)."""
        if self._closed:
            return
        self._closed = True
        lib = _libc.libc
        assert lib is not None
        ctypes.memset(self._addr, 0, self._mapped)
        if self._report.mlock and not self._report.memfd_secret:
            lib.munlock(self._addr, self._mapped)
        # MAP_FIXED atomically replaces the secret pages (they are freed) with a
        # read-only zero mapping, so a stale view reads zeros rather than faulting.
        addr = lib.mmap(
            self._addr,
            self._mapped,
            _libc.PROT_READ,
            _libc.MAP_PRIVATE | _libc.MAP_ANONYMOUS | _libc.MAP_FIXED | _libc.MAP_NORESERVE,
            -1,
            0,
        )
        if addr in (None, _libc.MAP_FAILED):
            # The zeroized pages stay mapped until __del__; nothing secret remains.
            return

    def __del__(self) -> None:
        # Runs only once no view refers to the memory (see __init__), so unmapping is
        # safe; at interpreter shutdown module globals may be gone: nothing to report.
        with contextlib.suppress(Exception):
            lib = _libc.libc
            if lib is None or not getattr(self, "_addr", 0):
                return
            try:
                self.close()
            finally:
                lib.munmap(self._addr, self._mapped)
                self._addr = 0

    def __repr__(self) -> str:
        kind = "memfd_secret" if self._report.memfd_secret else "anonymous"
        state = "closed" if self._closed else "open"
        return f"ProtectedBuffer({self.size} bytes, {kind}, {state})"


_probe_cache: ProtectionReport | None = None


def probe_buffer_protections() -> ProtectionReport:
    """What a one-page ProtectedBuffer gets here (cached: the kernel does not change)."""
    global _probe_cache
    if _probe_cache is None:
        try:
            buf = ProtectedBuffer(1)
        except ProtectedMemoryError as exc:
            return ProtectionReport(notes=[str(exc)])
        _probe_cache = buf._report.model_copy()
        buf.close()
    return _probe_cache.model_copy(deep=True)
