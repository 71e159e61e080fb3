"""Secret bytes that zeroize themselves and never show up in a repr or a log."""

from __future__ import annotations

import contextlib
import ctypes
import secrets
from types import TracebackType


def zeroize(buf: bytearray | memoryview) -> None:
    """Overwrite a writable buffer with zeros in place.

    ``ctypes.memset`` is used because a Python loop or slice assignment may be
    optimised into a new object; memset writes the very bytes we hold.
    """
    view = memoryview(buf).cast("B")
    n = view.nbytes
    if n == 0 or view.readonly:
        return
    c_buf = (ctypes.c_char * n).from_buffer(view)
    ctypes.memset(ctypes.addressof(c_buf), 0, n)
    del c_buf


class SecretBytes:
    """Key material in a mutable buffer, wiped by :meth:`zeroize` or on exit.

    The value is reachable only through :meth:`reveal` (a memoryview over the
    live buffer) or :meth:`bytes` (an immutable copy, for APIs that need one:
    the copy cannot be wiped, so prefer ``reveal``).
    """

    __slots__ = ("_buf", "_label")

    def __init__(self, data: bytes | bytearray | memoryview, *, label: str = "secret") -> None:
        self._buf = bytearray(data)
        if isinstance(data, bytearray):
            zeroize(data)
        self._label = label

    @classmethod
    def random(cls, n: int, *, label: str = "secret") -> SecretBytes:
        buf = bytearray(secrets.token_bytes(n))
        return cls(buf, label=label)

    @classmethod
    def from_buffer(cls, buf: bytearray, *, label: str = "secret") -> SecretBytes:
        """Adopt ``buf`` without copying; it is wiped when this object is."""
        obj = cls.__new__(cls)
        obj._buf = buf
        obj._label = label
        return obj

    def reveal(self) -> memoryview:
        if self.wiped:
            raise ValueError(f"{self._label} was already zeroized")
        return memoryview(self._buf)

    def bytes(self) -> bytes:
        return bytes(self.reveal())

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def wiped(self) -> bool:
        return len(self._buf) == 0

    def zeroize(self) -> None:
        if self._buf:
            zeroize(self._buf)
            self._buf = bytearray()

    def __enter__(self) -> SecretBytes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.zeroize()

    def __del__(self) -> None:
        # At interpreter shutdown ctypes may already be gone; nothing to report.
        with contextlib.suppress(Exception):
            self.zeroize()

    def __repr__(self) -> str:
        state = "wiped" if self.wiped else f"{len(self._buf)} bytes"
        return f"SecretBytes({self._label}, {state})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        from cryptography.hazmat.primitives import constant_time

        if not isinstance(other, SecretBytes):
            return NotImplemented
        return constant_time.bytes_eq(bytes(self._buf), bytes(other._buf))

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("SecretBytes cannot be pickled")
