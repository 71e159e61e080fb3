"""Thin ctypes bindings to the Linux calls Python's ``mmap`` module lacks.

Python's mmap cannot map with MAP_FIXED, call memfd_secret or mlock, and refuses to
close while views exist; owning the raw mapping lets us zeroize and replace it
deterministically.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MADV_DONTFORK = 10
MADV_DONTDUMP = 16
MADV_WIPEONFORK = 18
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
# memfd_secret has the same number on x86_64 and arm64 (the unified table).
SYS_MEMFD_SECRET = 447
MAP_FAILED = ctypes.c_void_p(-1).value

IS_LINUX = sys.platform.startswith("linux")


def _load() -> ctypes.CDLL | None:
    if not IS_LINUX:
        return None
    lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.munmap.restype = ctypes.c_int
    lib.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.mlock.restype = ctypes.c_int
    lib.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.munlock.restype = ctypes.c_int
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.madvise.restype = ctypes.c_int
    lib.syscall.restype = ctypes.c_long
    lib.prctl.restype = ctypes.c_int
    return lib


libc = _load()


def errno_text() -> str:
    """The current errno as ``ENAME`` (no message text that could vary by locale)."""
    err = ctypes.get_errno()
    return os.strerror(err) if err else "unknown error"


def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
