"""Key material held in protected memory, with the SecretBytes interface."""

from __future__ import annotations

import contextlib

from cryptography.hazmat.primitives import constant_time

from teellm.crypto.secret import SecretBytes, zeroize
from teellm.memory.protected import ProtectedBuffer
from teellm.memory.report import ProtectionReport


class ProtectedSecret(SecretBytes):
    """A :class:`SecretBytes` whose bytes live in a :class:`ProtectedBuffer`.

    It is a SecretBytes (``isinstance`` holds), so every API taking a content key
    accepts it; ``zeroize()`` wipes and releases the protected pages.
    """

    __slots__ = ("_pbuf", "_n")

    def __init__(
        self, data: bytes | bytearray | memoryview, *, label: str = "protected secret"
    ) -> None:
        src = memoryview(data).cast("B")
        self._n = src.nbytes
        self._pbuf: ProtectedBuffer | None = ProtectedBuffer(self._n)
        self._pbuf.view[: self._n] = src
        if isinstance(data, bytearray):
            zeroize(data)
        self._buf = bytearray()
        self._label = label

    @classmethod
    def from_buffer(cls, buf: bytearray, *, label: str = "secret") -> SecretBytes:
        """Move ``buf`` into protected memory (``buf`` is wiped)."""
        return cls(buf, label=label)

    def reveal(self) -> memoryview:
        if self._pbuf is None:
            raise ValueError(f"{self._label} was already zeroized")
        return self._pbuf.view[: self._n]

    def __len__(self) -> int:
        return 0 if self._pbuf is None else self._n

    @property
    def wiped(self) -> bool:
        return self._pbuf is None

    @property
    def protections(self) -> ProtectionReport:
        if self._pbuf is None:
            return ProtectionReport(notes=["secret was zeroized"])
        return self._pbuf.protections

    def zeroize(self) -> None:
        pbuf = getattr(self, "_pbuf", None)
        if pbuf is not None:
            self._pbuf = None
            pbuf.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.zeroize()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        if self.wiped or other.wiped:
            return self.wiped and other.wiped
        return constant_time.bytes_eq(bytes(self.reveal()), bytes(other.reveal()))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        state = "wiped" if self.wiped else f"{self._n} bytes"
        return f"ProtectedSecret({self._label}, {state})"

    __str__ = __repr__


def protected_secret(data: bytes | bytearray | memoryview, *, label: str = "secret") -> SecretBytes:
    """Copy ``data`` into protected memory (wiping ``data`` if it is a bytearray)."""
    return ProtectedSecret(data, label=label)
