"""The end-to-end encryption envelope, version 1 (specified in docs/protocol.md).

Request: HPKE-sealed to the server's attested key. Inside: a fresh 32-byte
response key, the API path and the OpenAI request body, zero-padded to a size
bucket. Response: a header with a random salt, then frames, each AES-256-GCM
sealed under a key derived from the response key, the salt and the hash of the
whole request ciphertext. The frame's sequence number is the GCM nonce and its
flags byte the AAD; the last frame carries the FINAL flag. So a frame cannot be
flipped, dropped, reordered, replayed, cut off or moved to another response
without the opener raising a typed error.

Every parser here takes hostile bytes and raises only :class:`EnvelopeError`
subclasses; messages never include plaintext or key bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teellm.crypto.hpke import HpkeError, HpkePrivateKey, HpkePublicKey, Kem
from teellm.crypto.secret import SecretBytes
from teellm.errors import TeellmError

VERSION = 1
KIND_REQUEST = 1
KIND_RESPONSE = 2
MEDIA_TYPE = "application/teellm-envelope"
KEY_ID_HEADER = "X-Teellm-Key-Id"

KEY_ID_SIZE = 16
RESPONSE_KEY_SIZE = 32
SALT_SIZE = 32
TAG_SIZE = 16
REQUEST_HEADER_SIZE = 3 + KEY_ID_SIZE
RESPONSE_HEADER_SIZE = 3 + SALT_SIZE

REQUEST_FLOOR = 1024
RESPONSE_FLOOR = 1024
STREAM_FLOOR = 256
FINAL_FLOOR = 512

MAX_REQUEST_SIZE = 32 * 1024 * 1024
MAX_FRAME_SIZE = 16 * 1024 * 1024
MAX_PATH_SIZE = 256
MAX_FRAMES = 2**32

FLAG_FINAL = 0x01

REQUEST_INFO = b"teellm/envelope/v1/request"
RESPONSE_INFO = b"teellm/envelope/v1/response"
KEY_ID_DOMAIN = b"teellm/key-id/v1"


class EnvelopeError(TeellmError):
    """Base of every envelope failure."""

    code = "envelope_error"


class MalformedEnvelopeError(EnvelopeError):
    """Bytes that do not parse as an envelope."""

    code = "envelope_malformed"


class KeyMismatchError(EnvelopeError):
    """The request was sealed to a key this server does not hold (re-attest)."""

    code = "key_id_mismatch"


class RequestDecryptError(EnvelopeError):
    """The request ciphertext did not open (wrong key or tampered)."""

    code = "envelope_decrypt_failed"


class ResponseTamperedError(EnvelopeError):
    """A response frame failed authentication: altered, dropped, reordered,
    replayed or taken from another response."""

    code = "response_tampered"


class ResponseTruncatedError(EnvelopeError):
    """The response ended before its FINAL frame."""

    code = "response_truncated"


class ResponseContent(IntEnum):
    """What the response frames' data is, once concatenated."""

    JSON = 0
    EVENT_STREAM = 1

    @property
    def media_type(self) -> str:
        return "application/json" if self is ResponseContent.JSON else "text/event-stream"


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def key_id(hpke_public: bytes, signing_public: bytes) -> bytes:
    """The 16-byte identifier of a server's identity key pair (HPKE + Ed25519)."""
    return sha256(_lp(KEY_ID_DOMAIN) + _lp(hpke_public) + _lp(signing_public))[:KEY_ID_SIZE]


def padded_size(n: int, floor: int) -> int:
    """The size bucket for ``n`` bytes: the next power of two, at least ``floor``."""
    return max(floor, 1 << max(n - 1, 0).bit_length())


def _pad(data: bytes, floor: int) -> bytes:
    """``u32 len || data || zeros`` to the bucket size."""
    n = 4 + len(data)
    return struct.pack(">I", len(data)) + data + bytes(padded_size(n, floor) - n)


def _unpad(padded: bytes, error: type[EnvelopeError]) -> bytes:
    if len(padded) < 4:
        raise error("padded payload too short")
    (n,) = struct.unpack_from(">I", padded)
    if n > len(padded) - 4:
        raise error("padded payload length out of range")
    if padded.count(0, 4 + n) != len(padded) - 4 - n:  # C-speed all-zero check
        raise error("padding is not zero")
    return padded[4 : 4 + n]


def _frame_nonce(seq: int) -> bytes:
    return bytes(4) + struct.pack(">Q", seq)


def _response_aead(response_key: SecretBytes, salt: bytes, binding: bytes, header: bytes) -> AESGCM:
    # HKDF with the server's random salt: a replayed request gets a fresh key, so
    # frame nonces (sequence numbers) never repeat under one key.
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=salt,
        info=RESPONSE_INFO + binding + header,
    ).derive(bytes(response_key.reveal()))
    return AESGCM(okm)


# ----------------------------------------------------------------------------- requests


def request_header(kem: Kem, server_key_id: bytes) -> bytes:
    if len(server_key_id) != KEY_ID_SIZE:
        raise ValueError("key id must be 16 bytes")
    return bytes([VERSION, KIND_REQUEST, kem.suite_id]) + server_key_id


@dataclass
class SealedRequest:
    """A request ready to send, and what the client needs to open the answer."""

    wire: bytes
    binding: bytes
    body_hash: bytes
    response_key: SecretBytes = field(repr=False)

    def opener(self) -> ResponseOpener:
        return ResponseOpener(self.response_key, self.binding)

    def open_response(self, wire: bytes) -> OpenedResponse:
        return open_response(self.response_key, self.binding, wire)


def seal_request(
    body: bytes,
    *,
    path: str,
    public_key: HpkePublicKey,
    server_key_id: bytes,
    response_key: SecretBytes | None = None,
) -> SealedRequest:
    """Seal an API request body for ``path`` to the server's HPKE key."""
    path_bytes = path.encode()
    if not path_bytes or len(path_bytes) > MAX_PATH_SIZE:
        raise ValueError("path must be 1 to 256 bytes")
    if response_key is None:
        response_key = SecretBytes.random(RESPONSE_KEY_SIZE, label="response-key")
    elif len(response_key) != RESPONSE_KEY_SIZE:
        raise ValueError("response key must be 32 bytes")
    header = request_header(public_key.kem, server_key_id)
    inner = bytearray(response_key.reveal())
    inner += struct.pack(">H", len(path_bytes)) + path_bytes
    inner += _pad(bytes(body), REQUEST_FLOOR)
    try:
        sealed = public_key.seal(bytes(inner), info=REQUEST_INFO + header)
    finally:
        SecretBytes.from_buffer(inner).zeroize()
    wire = header + sealed
    return SealedRequest(
        wire=wire, binding=sha256(wire), body_hash=sha256(bytes(body)), response_key=response_key
    )


def peek_key_id(wire: bytes) -> bytes:
    """The server key id a request names, after checking the header shape."""
    if len(wire) < REQUEST_HEADER_SIZE:
        raise MalformedEnvelopeError("request envelope too short")
    if wire[0] != VERSION:
        raise MalformedEnvelopeError("unsupported envelope version", code="envelope_version")
    if wire[1] != KIND_REQUEST:
        raise MalformedEnvelopeError("not a request envelope")
    return bytes(wire[3:REQUEST_HEADER_SIZE])


@dataclass
class OpenedRequest:
    """A decrypted request, on the server."""

    path: str
    body: bytes = field(repr=False)
    binding: bytes
    body_hash: bytes
    response_key: SecretBytes = field(repr=False)

    def json(self) -> Any:
        """The body as JSON; :class:`MalformedEnvelopeError` if it is not."""
        import json

        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise MalformedEnvelopeError(
                "request body is not valid JSON", code="invalid_json"
            ) from None

    def sealer(self, content: ResponseContent, *, salt: bytes | None = None) -> ResponseSealer:
        """A sealer for the answer to this request."""
        return ResponseSealer(self.response_key, self.binding, content, salt=salt)


def open_request(
    wire: bytes, private_key: HpkePrivateKey, *, server_key_id: bytes
) -> OpenedRequest:
    """Open a request sealed to this server (hostile input: typed errors only)."""
    wire = bytes(wire)
    if len(wire) > MAX_REQUEST_SIZE:
        raise MalformedEnvelopeError("request envelope too large", code="envelope_too_large")
    kid = peek_key_id(wire)
    try:
        kem = Kem.from_suite_id(wire[2])
    except HpkeError:
        raise MalformedEnvelopeError("unknown HPKE suite", code="unknown_suite") from None
    if kem is not private_key.kem or kid != server_key_id:
        raise KeyMismatchError("request is sealed to another server key")
    header = wire[:REQUEST_HEADER_SIZE]
    if len(wire) < REQUEST_HEADER_SIZE + kem.enc_size + TAG_SIZE:
        raise MalformedEnvelopeError("request envelope too short")
    try:
        inner = bytearray(private_key.open(wire[REQUEST_HEADER_SIZE:], info=REQUEST_INFO + header))
    except HpkeError:
        raise RequestDecryptError("request envelope could not be decrypted") from None
    try:
        if len(inner) < RESPONSE_KEY_SIZE + 2:
            raise MalformedEnvelopeError("request payload too short")
        response_key = SecretBytes(inner[:RESPONSE_KEY_SIZE], label="response-key")
        (plen,) = struct.unpack_from(">H", inner, RESPONSE_KEY_SIZE)
        start = RESPONSE_KEY_SIZE + 2
        if plen == 0 or plen > MAX_PATH_SIZE or start + plen > len(inner):
            raise MalformedEnvelopeError("request path length out of range")
        try:
            path = bytes(inner[start : start + plen]).decode("ascii")
        except UnicodeDecodeError:
            raise MalformedEnvelopeError("request path is not ASCII") from None
        body = _unpad(bytes(inner[start + plen :]), MalformedEnvelopeError)
    finally:
        SecretBytes.from_buffer(inner).zeroize()
    return OpenedRequest(
        path=path,
        body=body,
        binding=sha256(wire),
        body_hash=sha256(body),
        response_key=response_key,
    )


# ---------------------------------------------------------------------------- responses


def response_header(content: ResponseContent, salt: bytes) -> bytes:
    return bytes([VERSION, KIND_RESPONSE, int(content)]) + salt


class ResponseSealer:
    """Seals the answer to one request: :attr:`header`, then frames, then :meth:`finish`."""

    def __init__(
        self,
        response_key: SecretBytes,
        binding: bytes,
        content: ResponseContent,
        *,
        salt: bytes | None = None,
    ) -> None:
        import secrets

        salt = secrets.token_bytes(SALT_SIZE) if salt is None else bytes(salt)
        if len(salt) != SALT_SIZE:
            raise ValueError("salt must be 32 bytes")
        self.content = content
        self.header = response_header(content, salt)
        self._aead = _response_aead(response_key, salt, binding, self.header)
        self._seq = 0
        self._hash = hashlib.sha256()
        self._finished = False
        self._floor = STREAM_FLOOR if content is ResponseContent.EVENT_STREAM else RESPONSE_FLOOR

    @property
    def response_hash(self) -> bytes:
        """SHA-256 of all data sealed so far (what a receipt signs)."""
        return self._hash.digest()

    def _frame(self, data: bytes, flags: int, floor: int) -> bytes:
        if self._finished:
            raise EnvelopeError("response already finished", code="envelope_finished")
        if self._seq >= MAX_FRAMES:
            raise EnvelopeError("too many frames", code="envelope_too_large")
        padded = _pad(data, floor)
        if len(padded) + 1 + TAG_SIZE > MAX_FRAME_SIZE:
            raise EnvelopeError("frame too large", code="envelope_too_large")
        ct = self._aead.encrypt(_frame_nonce(self._seq), padded, bytes([flags]))
        self._seq += 1
        return struct.pack(">IB", 1 + len(ct), flags) + ct

    def seal(self, data: bytes) -> bytes:
        """One data frame (a streamed chunk, or the whole JSON body)."""
        data = bytes(data)
        frame = self._frame(data, 0, self._floor)
        self._hash.update(data)
        return frame

    def finish(self, receipt: bytes = b"") -> bytes:
        """The FINAL frame; it carries the receipt bytes (may be empty)."""
        frame = self._frame(bytes(receipt), FLAG_FINAL, FINAL_FLOOR)
        self._finished = True
        return frame

    def seal_all(self, data: bytes, receipt: bytes = b"") -> bytes:
        """A whole non-streamed response: header, one data frame, FINAL frame.

        The receipt must sign :func:`sha256` of ``data``, which equals
        :attr:`response_hash` after sealing.
        """
        return self.header + self.seal(data) + self.finish(receipt)


@dataclass
class OpenedResponse:
    content: ResponseContent
    data: bytes = field(repr=False)
    receipt: bytes
    response_hash: bytes


class ResponseOpener:
    """Incremental opener: :meth:`feed` bytes as they arrive, then :meth:`close`."""

    def __init__(self, response_key: SecretBytes, binding: bytes) -> None:
        self._key = response_key
        self._binding = bytes(binding)
        self._buf = bytearray()
        self._aead: AESGCM | None = None
        self._seq = 0
        self._hash = hashlib.sha256()
        self._broken = False
        self.content: ResponseContent | None = None
        self.receipt: bytes | None = None

    @property
    def finished(self) -> bool:
        return self.receipt is not None

    @property
    def response_hash(self) -> bytes:
        return self._hash.digest()

    def feed(self, data: bytes) -> list[bytes]:
        """Decrypted data frames completed by ``data`` (possibly none).

        After the first error the opener refuses everything that follows.
        """
        if self._broken:
            raise ResponseTamperedError("response already failed verification")
        try:
            return self._feed(data)
        except EnvelopeError:
            self._broken = True
            raise

    def _feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        if self._aead is None:
            if len(self._buf) < RESPONSE_HEADER_SIZE:
                return out
            header = bytes(self._buf[:RESPONSE_HEADER_SIZE])
            if header[0] != VERSION:
                raise MalformedEnvelopeError(
                    "unsupported envelope version", code="envelope_version"
                )
            if header[1] != KIND_RESPONSE:
                raise MalformedEnvelopeError("not a response envelope")
            try:
                self.content = ResponseContent(header[2])
            except ValueError:
                raise MalformedEnvelopeError("unknown response content type") from None
            self._aead = _response_aead(self._key, header[3:], self._binding, header)
            del self._buf[:RESPONSE_HEADER_SIZE]
        while len(self._buf) >= 4:
            if self.finished:
                raise MalformedEnvelopeError(
                    "data after the final frame", code="envelope_trailing_data"
                )
            (n,) = struct.unpack_from(">I", self._buf)
            if n < 1 + TAG_SIZE + 4 or n > MAX_FRAME_SIZE:
                raise MalformedEnvelopeError("frame length out of range")
            if len(self._buf) < 4 + n:
                break
            flags = self._buf[4]
            ct = bytes(self._buf[5 : 4 + n])
            del self._buf[: 4 + n]
            if flags & ~FLAG_FINAL:
                raise MalformedEnvelopeError("unknown frame flags")
            try:
                padded = self._aead.decrypt(_frame_nonce(self._seq), ct, bytes([flags]))
            except InvalidTag:
                raise ResponseTamperedError(
                    f"response frame {self._seq} failed authentication"
                ) from None
            self._seq += 1
            payload = _unpad(padded, ResponseTamperedError)
            if flags & FLAG_FINAL:
                self.receipt = payload
            else:
                self._hash.update(payload)
                out.append(payload)
        return out

    def close(self) -> None:
        """Raise :class:`ResponseTruncatedError` unless the FINAL frame arrived intact."""
        if self._broken:
            raise ResponseTamperedError("response already failed verification")
        if not self.finished:
            raise ResponseTruncatedError("response ended before its final frame")
        if self._buf:
            raise MalformedEnvelopeError(
                "data after the final frame", code="envelope_trailing_data"
            )


def open_response(response_key: SecretBytes, binding: bytes, wire: bytes) -> OpenedResponse:
    """Open a complete response (non-streamed, or a stream read to its end)."""
    opener = ResponseOpener(response_key, binding)
    data = b"".join(opener.feed(wire))
    opener.close()
    assert opener.content is not None and opener.receipt is not None
    return OpenedResponse(
        content=opener.content,
        data=data,
        receipt=opener.receipt,
        response_hash=opener.response_hash,
    )
