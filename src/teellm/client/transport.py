"""httpx transports that verify the server, then encrypt every API request end to end.

Any client built on httpx (the ``openai`` package included) gets confidential
inference by using :class:`VerifyingTransport` / :class:`AsyncVerifyingTransport`:
before the first request the transport fetches ``/v1/attestation`` with a fresh
nonce, verifies it under the client policy and pins the server's keys. POST
bodies are then sealed to the pinned HPKE key; the sealed answer (one body or a
stream of frames) is opened and checked frame by frame, and its receipt is
verified, so the caller sees ordinary plaintext JSON or SSE. A server whose key
changed answers with its new key id; the transport re-verifies and retries once.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx

from teellm.crypto import envelope
from teellm.crypto.receipts import Receipt, ReceiptError, verify_receipt
from teellm.errors import TeellmError
from teellm.server.document import (
    AttestationDocument,
    ClientPolicy,
    DocumentError,
    PinnedKeys,
    ReportCheck,
    VerificationFailed,
    VerificationReport,
    pinned_keys,
    verify_document,
)

ATTESTATION_PATH = "/v1/attestation"
NONCE_SIZE = 32
DONE_MARKER = b"data: [DONE]"
MAX_DOCUMENT_BYTES = 1024 * 1024


class ServerProtocolError(TeellmError):
    """The server broke the protocol (e.g. answered an encrypted request in plaintext)."""

    code = "server_protocol_error"


class AttestationUnavailable(TeellmError):
    """The attestation document could not be fetched."""

    code = "attestation_unavailable"


def load_policy(policy: ClientPolicy | str | Path) -> ClientPolicy:
    return policy if isinstance(policy, ClientPolicy) else ClientPolicy.from_yaml(policy)


class ServerSession:
    """Verification state for one server: the policy, the pinned keys, the last report.

    Shared by every transport and client talking to the same server; thread-safe.
    """

    def __init__(self, url: str, policy: ClientPolicy | str | Path) -> None:
        self.url = url.rstrip("/")
        self.policy = load_policy(policy)
        self.pinned: PinnedKeys | None = None
        self.report: VerificationReport | None = None
        self.document: AttestationDocument | None = None
        self.last_receipt: Receipt | None = None
        self.on_receipt: Callable[[Receipt], None] | None = None
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None

    # -- attestation
    def attestation_request(self) -> tuple[httpx.Request, bytes]:
        nonce = secrets.token_bytes(NONCE_SIZE)
        request = httpx.Request(
            "GET",
            self.url + ATTESTATION_PATH,
            params={"nonce": nonce.hex()},
            headers={"Accept": "application/json"},
        )
        return request, nonce

    def accept(self, status: int, content: bytes, nonce: bytes) -> VerificationReport:
        """Verify a fetched document; pin its keys or raise :class:`VerificationFailed`."""
        if status != 200:
            raise AttestationUnavailable(f"attestation endpoint answered HTTP {status}")
        try:
            doc = AttestationDocument.from_json(content)
        except DocumentError as exc:
            report = VerificationReport(
                url=self.url,
                accepted=False,
                checks=[ReportCheck(name="document", passed=False, reason=str(exc))],
                verified_at=datetime.now(UTC),
            )
            raise VerificationFailed(report) from None
        report = verify_document(doc, self.policy, nonce=nonce, url=self.url)
        self.report = report
        if not report.accepted:
            self.pinned = None
            raise VerificationFailed(report)
        self.document = doc
        self.pinned = pinned_keys(doc)
        return report

    def verify_with(self, transport: httpx.BaseTransport) -> VerificationReport:
        request, nonce = self.attestation_request()
        try:
            response = transport.handle_request(request)
            try:
                content = _read_limited(response.stream, MAX_DOCUMENT_BYTES)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise AttestationUnavailable(
                f"cannot fetch the attestation document ({type(exc).__name__})"
            ) from None
        return self.accept(response.status_code, content, nonce)

    async def averify_with(self, transport: httpx.AsyncBaseTransport) -> VerificationReport:
        request, nonce = self.attestation_request()
        try:
            response = await transport.handle_async_request(request)
            try:
                content = await _aread_limited(response.stream, MAX_DOCUMENT_BYTES)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise AttestationUnavailable(
                f"cannot fetch the attestation document ({type(exc).__name__})"
            ) from None
        return self.accept(response.status_code, content, nonce)

    def ensure(self, transport: httpx.BaseTransport, *, stale: bytes | None = None) -> PinnedKeys:
        """Pinned keys, verifying first if none (or if ``stale`` is the pinned key id)."""
        with self._lock:
            if self.pinned is None or (stale is not None and self.pinned.key_id == stale):
                self.verify_with(transport)
            assert self.pinned is not None
            return self.pinned

    async def aensure(
        self, transport: httpx.AsyncBaseTransport, *, stale: bytes | None = None
    ) -> PinnedKeys:
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            if self.pinned is None or (stale is not None and self.pinned.key_id == stale):
                await self.averify_with(transport)
            assert self.pinned is not None
            return self.pinned

    # -- one exchange
    def seal(self, request: httpx.Request, body: bytes, keys: PinnedKeys) -> _Exchange:
        sealed = envelope.seal_request(
            body, path=request.url.path, public_key=keys.hpke, server_key_id=keys.key_id
        )
        headers = httpx.Headers(request.headers)
        for name in ("content-length", "content-type", "transfer-encoding", "accept-encoding"):
            headers.pop(name, None)
        headers["content-type"] = envelope.MEDIA_TYPE
        headers["accept-encoding"] = "identity"
        sent = httpx.Request(
            request.method,
            request.url,
            headers=headers,
            content=sealed.wire,
            extensions=request.extensions,
        )
        return _Exchange(self, sent, sealed, body, keys)


class _Exchange:
    """One sealed request and the checks on its answer."""

    def __init__(
        self,
        session: ServerSession,
        request: httpx.Request,
        sealed: envelope.SealedRequest,
        body: bytes,
        keys: PinnedKeys,
    ) -> None:
        self.session = session
        self.request = request
        self.sealed = sealed
        self.body_hash = envelope.sha256(body)
        self.keys = keys
        self.opener = sealed.opener()

    def key_changed(self, response: httpx.Response) -> bool:
        """Whether a plaintext error names another server key than the one we used."""
        announced = response.headers.get(envelope.KEY_ID_HEADER, "").strip().lower()
        return bool(announced) and announced != self.keys.key_id.hex()

    def plain_error(self, response: httpx.Response, content: bytes) -> httpx.Response:
        """A plaintext answer is only acceptable as an error (it never holds our data)."""
        if response.status_code < 400:
            raise ServerProtocolError("server answered an encrypted request without encryption")
        headers = httpx.Headers(response.headers)  # raw bytes: content-encoding stays valid
        for name in ("content-length", "transfer-encoding"):
            headers.pop(name, None)
        return httpx.Response(
            response.status_code, headers=headers, content=content, extensions=response.extensions
        )

    def response_headers(self, response: httpx.Response) -> httpx.Headers:
        assert self.opener.content is not None
        headers = httpx.Headers(response.headers)
        for name in ("content-length", "content-encoding", "transfer-encoding", "content-type"):
            headers.pop(name, None)
        headers["content-type"] = self.opener.content.media_type
        return headers

    def finish(self, status: int) -> None:
        """After the FINAL frame: check the receipt covers this exchange."""
        self.opener.close()
        raw = self.opener.receipt or b""
        if not raw:
            if status < 400 and self.session.policy.require_receipts:
                raise ReceiptError("the response carries no receipt", code="receipt_missing")
            return
        receipt = verify_receipt(raw, self.keys.signing, model_digest=self.keys.model_digest)
        if (
            bytes.fromhex(receipt.request_hash) != self.body_hash
            or bytes.fromhex(receipt.response_hash) != self.opener.response_hash
        ):
            raise ReceiptError("receipt does not cover this exchange", code="receipt_mismatch")
        self.session.last_receipt = receipt
        if self.session.on_receipt is not None:
            self.session.on_receipt(receipt)


def _is_sealed(response: httpx.Response) -> bool:
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype == envelope.MEDIA_TYPE


def _should_seal(request: httpx.Request) -> bool:
    return request.method.upper() == "POST"


def _read_limited(stream: Any, limit: int) -> bytes:
    buf = bytearray()
    for chunk in stream:
        buf += chunk
        if len(buf) > limit:
            raise ServerProtocolError("plaintext answer too large")
    return bytes(buf)


async def _aread_limited(stream: Any, limit: int) -> bytes:
    buf = bytearray()
    async for chunk in stream:
        buf += chunk
        if len(buf) > limit:
            raise ServerProtocolError("plaintext answer too large")
    return bytes(buf)


def _release(part: bytes, held: list[bytes]) -> list[bytes]:
    """Plaintext to pass on now. The SSE end marker waits for the FINAL frame:
    SSE consumers (the ``openai`` package) stop reading at ``[DONE]``, and the
    end of stream and its receipt must be verified before they see it."""
    if held or part.rstrip().endswith(DONE_MARKER):
        held.append(part)
        return []
    return [part]


class _OpenedStream(httpx.SyncByteStream):
    def __init__(
        self, first: list[bytes], upstream: Iterator[bytes], exchange: _Exchange, status: int
    ) -> None:
        self._first = first
        self._upstream = upstream
        self._exchange = exchange
        self._status = status
        self._response: httpx.Response | None = None

    def __iter__(self) -> Iterator[bytes]:
        held: list[bytes] = []
        for part in self._first:
            yield from _release(part, held)
        for raw in self._upstream:
            for part in self._exchange.opener.feed(raw):
                yield from _release(part, held)
        self._exchange.finish(self._status)
        yield from held

    def close(self) -> None:
        if self._response is not None:
            self._response.close()


class _AsyncOpenedStream(httpx.AsyncByteStream):
    def __init__(
        self,
        first: list[bytes],
        upstream: AsyncIterator[bytes],
        exchange: _Exchange,
        status: int,
    ) -> None:
        self._first = first
        self._upstream = upstream
        self._exchange = exchange
        self._status = status
        self._response: httpx.Response | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        held: list[bytes] = []
        for part in self._first:
            for out in _release(part, held):
                yield out
        async for raw in self._upstream:
            for part in self._exchange.opener.feed(raw):
                for out in _release(part, held):
                    yield out
        self._exchange.finish(self._status)
        for out in held:
            yield out

    async def aclose(self) -> None:
        if self._response is not None:
            await self._response.aclose()


class VerifyingTransport(httpx.BaseTransport):
    """Verifies the server before the first request and seals every POST to it."""

    def __init__(
        self,
        session: ServerSession,
        *,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        self.session = session
        self.inner = inner or httpx.HTTPTransport()

    def verify(self) -> VerificationReport:
        """Fetch and verify a fresh attestation document now; pin its keys."""
        with self.session._lock:
            return self.session.verify_with(self.inner)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not _should_seal(request):
            return self.inner.handle_request(request)
        body = request.read()
        stale: bytes | None = None
        for _attempt in range(2):
            keys = self.session.ensure(self.inner, stale=stale)
            exchange = self.session.seal(request, body, keys)
            response = self.inner.handle_request(exchange.request)
            if _is_sealed(response):
                return self._opened(response, exchange)
            try:
                content = _read_limited(response.stream, MAX_DOCUMENT_BYTES)
            finally:
                response.close()
            if exchange.key_changed(response) and _attempt == 0:
                stale = keys.key_id
                continue
            return exchange.plain_error(response, content)
        raise AssertionError("unreachable")

    def _opened(self, response: httpx.Response, exchange: _Exchange) -> httpx.Response:
        upstream = iter(cast(httpx.SyncByteStream, response.stream))
        first: list[bytes] = []
        try:
            while exchange.opener.content is None:
                raw = next(upstream, None)
                if raw is None:
                    exchange.opener.close()  # raises: truncated before the header
                    break
                first += exchange.opener.feed(raw)
        except BaseException:
            response.close()
            raise
        stream = _OpenedStream(first, upstream, exchange, response.status_code)
        stream._response = response
        return httpx.Response(
            response.status_code,
            headers=exchange.response_headers(response),
            stream=stream,
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


class AsyncVerifyingTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`VerifyingTransport`."""

    def __init__(
        self,
        session: ServerSession,
        *,
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.session = session
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def verify(self) -> VerificationReport:
        return await self.session.averify_with(self.inner)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not _should_seal(request):
            return await self.inner.handle_async_request(request)
        body = await request.aread()
        stale: bytes | None = None
        for _attempt in range(2):
            keys = await self.session.aensure(self.inner, stale=stale)
            exchange = self.session.seal(request, body, keys)
            response = await self.inner.handle_async_request(exchange.request)
            if _is_sealed(response):
                return await self._opened(response, exchange)
            try:
                content = await _aread_limited(response.stream, MAX_DOCUMENT_BYTES)
            finally:
                await response.aclose()
            if exchange.key_changed(response) and _attempt == 0:
                stale = keys.key_id
                continue
            return exchange.plain_error(response, content)
        raise AssertionError("unreachable")

    async def _opened(self, response: httpx.Response, exchange: _Exchange) -> httpx.Response:
        upstream = aiter(response.stream)  # type: ignore[arg-type]
        first: list[bytes] = []
        try:
            while exchange.opener.content is None:
                raw = await anext(upstream, None)
                if raw is None:
                    exchange.opener.close()
                    break
                first += exchange.opener.feed(raw)
        except BaseException:
            await response.aclose()
            raise
        stream = _AsyncOpenedStream(first, upstream, exchange, response.status_code)
        stream._response = response
        return httpx.Response(
            response.status_code,
            headers=exchange.response_headers(response),
            stream=stream,
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()
