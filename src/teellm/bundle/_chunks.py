"""Parallel per-chunk work shared by sealing and loading.

AES-GCM (cryptography) and hashlib release the GIL on large buffers, so a thread
pool over chunks scales with cores; every chunk is independent by construction.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from teellm.crypto.secret import zeroize
from teellm.memory import ProtectedBuffer

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_WORKERS = max(1, min(8, os.cpu_count() or 1))


def run_parallel(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool; the first failure (in order) is raised
    and the chunks not yet started are cancelled."""
    n = workers or DEFAULT_WORKERS
    if n <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="teellm-chunk") as pool:
        return list(pool.map(fn, items))


class ScratchBuffers:
    """One reusable buffer per worker thread; protected when it holds plaintext."""

    def __init__(self, size: int, *, protected: bool) -> None:
        self._size = size
        self._protected = protected
        self._local = threading.local()
        self._all: list[ProtectedBuffer | bytearray] = []

    def get(self) -> memoryview:
        view: memoryview | None = getattr(self._local, "view", None)
        if view is None:
            buf: ProtectedBuffer | bytearray
            if self._protected:
                buf = ProtectedBuffer(self._size)
                view = buf.view
            else:
                buf = bytearray(self._size)
                view = memoryview(buf)
            self._all.append(buf)
            self._local.view = view
        return view

    def close(self) -> None:
        for buf in self._all:
            if isinstance(buf, ProtectedBuffer):
                buf.close()
            else:
                zeroize(buf)
        self._all.clear()


def pread_exact(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``fd`` at ``offset``; return the byte count (short only at EOF)."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def chunk_ranges(size: int, chunk_size: int, count: int) -> Iterator[tuple[int, int, int]]:
    """(index, plaintext offset, plaintext length) of every chunk of a file."""
    for i in range(count):
        start = i * chunk_size
        yield i, start, max(0, min(chunk_size, size - start))


def flatten(groups: Iterable[Iterable[T]]) -> list[T]:
    return [x for g in groups for x in g]
