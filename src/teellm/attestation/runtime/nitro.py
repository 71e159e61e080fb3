"""Evidence from the AWS Nitro Secure Module (/dev/nsm).

The request is CBOR ``{"Attestation": {"user_data", "nonce", "public_key"}}``
and the answer ``{"Attestation": {"document": COSE_Sign1}}`` (or
``{"Error": name}``). On a real enclave the exchange is one ioctl on the NSM
character device; a unix socket at the device path speaks the same CBOR,
length-prefixed (u32 big-endian), for NSM bridges and tests.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

import cbor2

from teellm.attestation.types import REPORT_DATA_SIZE, AttestationError, Evidence, TeeType

DEFAULT_DEVICE = Path("/dev/nsm")
RESPONSE_MAX = 0x3000  # NSM_RESPONSE_MAX_SIZE in the kernel driver
# _IOWR(0x0A, 0, struct nsm_raw{iovec request; iovec response}) with 16-byte iovecs
NSM_IOCTL_RAW = (3 << 30) | (32 << 16) | (0x0A << 8)


class NitroRuntime:
    """Evidence from the Nitro Secure Module: report data goes into ``user_data``."""

    def __init__(self, device: Path = DEFAULT_DEVICE) -> None:
        self.device = Path(device)

    @staticmethod
    def available(device: Path = DEFAULT_DEVICE) -> bool:
        return device.exists()

    @property
    def kind(self) -> TeeType:
        return TeeType.NITRO

    @property
    def description(self) -> str:
        return f"AWS Nitro Secure Module at {self.device}"

    def evidence(
        self, report_data: bytes, *, nonce: bytes | None = None, public_key: bytes | None = None
    ) -> Evidence:
        """An attestation document whose ``user_data`` is ``report_data`` (64 bytes)."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise AttestationError("report data must be 64 bytes", code="report_data_size")
        request = cbor2.dumps(
            {
                "Attestation": {
                    "user_data": bytes(report_data),
                    "nonce": nonce,
                    "public_key": public_key,
                }
            }
        )
        reply = self._exchange(request)
        try:
            answer: Any = cbor2.loads(reply)
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
            raise AttestationError("NSM reply is not CBOR", code="nsm_failed") from None
        if isinstance(answer, dict) and "Error" in answer:
            raise AttestationError(f"NSM error: {str(answer['Error'])[:64]}", code="nsm_failed")
        try:
            document = answer["Attestation"]["document"]
        except (KeyError, TypeError):
            raise AttestationError("NSM reply has no document", code="nsm_failed") from None
        if not isinstance(document, bytes):
            raise AttestationError("NSM document is not bytes", code="nsm_failed")
        return Evidence(TeeType.NITRO, document)

    def _exchange(self, request: bytes) -> bytes:
        try:
            mode = os.stat(self.device).st_mode
        except OSError as exc:
            raise AttestationError(
                f"NSM device unavailable ({exc.strerror})", code="nsm_unavailable"
            ) from None
        if stat.S_ISSOCK(mode):
            return self._exchange_socket(request)
        return self._exchange_ioctl(request)

    def _exchange_socket(self, request: bytes) -> bytes:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(self.device))
                sock.sendall(struct.pack(">I", len(request)) + request)
                size = struct.unpack(">I", _recv_exact(sock, 4))[0]
                if size > RESPONSE_MAX:
                    raise AttestationError("NSM reply too large", code="nsm_failed")
                return _recv_exact(sock, size)
        except OSError as exc:
            raise AttestationError(f"NSM socket failed ({exc})", code="nsm_failed") from None

    def _exchange_ioctl(self, request: bytes) -> bytes:
        # No library wraps the NSM ioctl; it is one struct of two iovecs.
        req_buf = ctypes.create_string_buffer(request, len(request))
        resp_buf = ctypes.create_string_buffer(RESPONSE_MAX)
        msg = bytearray(
            struct.pack(
                "=QQQQ",
                ctypes.addressof(req_buf),
                len(request),
                ctypes.addressof(resp_buf),
                RESPONSE_MAX,
            )
        )
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise AttestationError(
                f"cannot open NSM device ({exc.strerror})", code="nsm_unavailable"
            ) from None
        try:
            fcntl.ioctl(fd, NSM_IOCTL_RAW, msg, True)
        except OSError as exc:
            raise AttestationError(
                f"NSM ioctl failed ({exc.strerror})", code="nsm_failed"
            ) from None
        finally:
            os.close(fd)
        length = struct.unpack_from("=Q", msg, 24)[0]
        return resp_buf.raw[: min(length, RESPONSE_MAX)]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise AttestationError("NSM socket closed early", code="nsm_failed")
        chunks += chunk
    return bytes(chunks)
