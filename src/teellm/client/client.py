"""The verifying client: SDK classes and the ``openai`` drop-in.

The ``openai`` package types its ``http_client`` as ``httpx2``, but accepts an
``httpx`` client at run time; teellm's transports are built on ``httpx``.

``Client(url, policy)`` verifies the server (fresh nonce, evidence, policy,
model identity) before it sends anything, then talks to it end to end
encrypted. ``openai_client(url, policy)`` returns a real ``openai.OpenAI``
whose HTTP transport does the same, so existing code works unchanged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from teellm.client.transport import (
    AsyncVerifyingTransport,
    ServerSession,
    VerifyingTransport,
)
from teellm.closing import Closing
from teellm.crypto.receipts import Receipt
from teellm.errors import TeellmError
from teellm.server.document import ClientPolicy, VerificationReport

if TYPE_CHECKING:
    import openai

DEFAULT_TIMEOUT = 120.0


class ApiResponseError(TeellmError):
    """The server answered with an error (after decryption, if it was sealed)."""

    code = "api_error"

    def __init__(self, status: int, body: bytes) -> None:
        code, message = "api_error", f"server answered HTTP {status}"
        try:
            err = json.loads(body).get("error", {})
            code = str(err.get("code") or err.get("type") or code)
            message = f"{message}: {err.get('message', '')}".rstrip(": ")
        except (ValueError, AttributeError):
            pass
        super().__init__(message, code=code)
        self.status = status


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def iter_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse OpenAI-style SSE ``data:`` events into JSON objects, up to ``[DONE]``.

    Hand-written because the format is a few lines and no parser ships with httpx.
    """
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if isinstance(event, dict) and "error" in event:
            raise ApiResponseError(500, data.encode())
        yield event


async def aiter_sse(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if isinstance(event, dict) and "error" in event:
            raise ApiResponseError(500, data.encode())
        yield event


def _chat_body(
    messages: list[dict[str, Any]], model: str, stream: bool, params: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, **params}
    if stream:
        body["stream"] = True
    return body


class _Base:
    def __init__(self, url: str, policy: ClientPolicy | str | Path) -> None:
        self.session = ServerSession(url, policy)

    @property
    def url(self) -> str:
        return self.session.url

    @property
    def report(self) -> VerificationReport | None:
        """The last verification report (``None`` before the first verification)."""
        return self.session.report

    @property
    def last_receipt(self) -> Receipt | None:
        """The verified receipt of the last completed response."""
        return self.session.last_receipt

    @property
    def model_id(self) -> str:
        """The verified model's id (verification must have happened)."""
        if self.session.document is None:
            raise TeellmError("server not verified yet", code="not_verified")
        return self.session.document.model.id


class Client(_Base, Closing):
    """Synchronous verifying client.

    Verification happens in the constructor (``verify=False`` defers it to the
    first request) and raises :class:`~teellm.server.document.VerificationFailed`
    with the report if the server does not satisfy ``policy``.
    """

    def __init__(
        self,
        url: str,
        policy: ClientPolicy | str | Path,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool = True,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, policy)
        self.transport = VerifyingTransport(self.session, inner=inner)
        self.http = httpx.Client(
            transport=self.transport,
            base_url=self.url,
            headers=_headers(api_key),
            timeout=timeout,
        )
        self._api_key = api_key
        if verify:
            try:
                self.verify()
            except BaseException:
                self.http.close()
                raise

    def verify(self) -> VerificationReport:
        """Fetch a fresh attestation document and verify it now."""
        return self.transport.verify()

    def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST an API request end to end encrypted; the decrypted JSON answer."""
        response = self.http.post(path, json=body)
        if response.status_code >= 400:
            raise ApiResponseError(response.status_code, response.content)
        result: dict[str, Any] = response.json()
        return result

    def models(self) -> list[str]:
        response = self.http.get("/v1/models")
        if response.status_code >= 400:
            raise ApiResponseError(response.status_code, response.content)
        return [m["id"] for m in response.json().get("data", [])]

    def chat(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """A chat completion (OpenAI JSON)."""
        body = _chat_body(messages, model or self.model_id, False, params)
        return self.request("/v1/chat/completions", body)

    def complete(self, prompt: str, *, model: str | None = None, **params: Any) -> dict[str, Any]:
        """A text completion (OpenAI JSON)."""
        return self.request(
            "/v1/completions", {"model": model or self.model_id, "prompt": prompt, **params}
        )

    def stream_chat(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Streamed chat completion chunks (OpenAI JSON objects), each frame verified."""
        body = _chat_body(messages, model or self.model_id, True, params)
        with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code >= 400:
                raise ApiResponseError(response.status_code, response.read())
            yield from iter_sse(response.iter_lines())

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        """An ``openai.OpenAI`` sharing this client's verified session (own connections)."""
        import openai

        http = httpx.Client(transport=VerifyingTransport(self.session), timeout=self.http.timeout)
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=self._api_key or "teellm",
            http_client=http,  # type: ignore[arg-type]
            **kwargs,
        )

    def close(self) -> None:
        self.http.close()


class AsyncClient(_Base):
    """Asynchronous verifying client; call ``await client.verify()`` (or use
    ``async with``) before the first request, or let the first request verify."""

    def __init__(
        self,
        url: str,
        policy: ClientPolicy | str | Path,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, policy)
        self.transport = AsyncVerifyingTransport(self.session, inner=inner)
        self.http = httpx.AsyncClient(
            transport=self.transport,
            base_url=self.url,
            headers=_headers(api_key),
            timeout=timeout,
        )
        self._api_key = api_key

    async def verify(self) -> VerificationReport:
        return await self.transport.verify()

    async def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(path, json=body)
        if response.status_code >= 400:
            raise ApiResponseError(response.status_code, response.content)
        result: dict[str, Any] = response.json()
        return result

    async def _model(self, model: str | None) -> str:
        if model is not None:
            return model
        if self.session.document is None:
            await self.verify()
        return self.model_id

    async def chat(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> dict[str, Any]:
        body = _chat_body(messages, await self._model(model), False, params)
        return await self.request("/v1/chat/completions", body)

    async def complete(
        self, prompt: str, *, model: str | None = None, **params: Any
    ) -> dict[str, Any]:
        body = {"model": await self._model(model), "prompt": prompt, **params}
        return await self.request("/v1/completions", body)

    async def stream_chat(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        body = _chat_body(messages, await self._model(model), True, params)
        async with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code >= 400:
                raise ApiResponseError(response.status_code, await response.aread())
            async for event in aiter_sse(response.aiter_lines()):
                yield event

    def openai(self, **kwargs: Any) -> openai.AsyncOpenAI:
        import openai

        http = httpx.AsyncClient(
            transport=AsyncVerifyingTransport(self.session), timeout=self.http.timeout
        )
        return openai.AsyncOpenAI(
            base_url=self.url + "/v1",
            api_key=self._api_key or "teellm",
            http_client=http,  # type: ignore[arg-type]
            **kwargs,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        if self.session.pinned is None:
            await self.verify()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def openai_client(
    url: str,
    policy: ClientPolicy | str | Path,
    *,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **kwargs: Any,
) -> openai.OpenAI:
    """A real ``openai.OpenAI`` for ``url`` whose transport verifies and encrypts.

    The server is verified here, before this returns: a server that fails the
    policy raises :class:`~teellm.server.document.VerificationFailed` and no
    prompt is ever sent to it.
    """
    import openai

    session = ServerSession(url, policy)
    transport = VerifyingTransport(session)
    transport.verify()
    client = openai.OpenAI(
        base_url=session.url + "/v1",
        api_key=api_key or "teellm",
        http_client=httpx.Client(transport=transport, timeout=timeout),  # type: ignore[arg-type]
        **kwargs,
    )
    client._teellm_session = session  # type: ignore[attr-defined]
    return client


def async_openai_client(
    url: str,
    policy: ClientPolicy | str | Path,
    *,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **kwargs: Any,
) -> openai.AsyncOpenAI:
    """The ``openai.AsyncOpenAI`` twin of :func:`openai_client` (verifies before returning)."""
    import openai

    session = ServerSession(url, policy)
    with httpx.HTTPTransport() as sync_transport:
        session.verify_with(sync_transport)
    http = httpx.AsyncClient(transport=AsyncVerifyingTransport(session), timeout=timeout)
    client = openai.AsyncOpenAI(
        base_url=session.url + "/v1",
        api_key=api_key or "teellm",
        http_client=http,  # type: ignore[arg-type]
        **kwargs,
    )
    client._teellm_session = session  # type: ignore[attr-defined]
    return client


def session_of(client: Any) -> ServerSession:
    """The verified session behind an ``openai`` client made by this module."""
    session = getattr(client, "_teellm_session", None)
    if not isinstance(session, ServerSession):
        raise TeellmError("not a teellm openai client", code="not_teellm_client")
    return session
