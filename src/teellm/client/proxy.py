"""A local OpenAI-compatible endpoint that verifies the server and encrypts upstream.

For curl and every language without a teellm SDK: point any OpenAI client at
``http://127.0.0.1:8080/v1``. The proxy verified the server before it started
listening; every POST is sealed to the attested key, every answer opened and
checked (frames, end of stream, receipt) before it is passed on. It listens on
loopback only: plaintext never leaves the machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers

from teellm.client.transport import AsyncVerifyingTransport, ServerSession
from teellm.errors import TeellmError
from teellm.server.document import ClientPolicy

log = logging.getLogger("teellm.client.proxy")

FORWARDED_HEADERS = ("content-type", "accept", "authorization")
UPSTREAM_TIMEOUT = httpx.Timeout(30.0, read=600.0)


class ProxyError(TeellmError):
    code = "proxy_error"


def check_loopback(host: str) -> None:
    """Refuse any listening address that is not loopback."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ProxyError(
            f"the proxy listens on loopback only, not {host!r}", code="proxy_not_loopback"
        )


def _loopback_name(host: str) -> bool:
    """Whether a ``Host``/``Origin`` host part (port allowed) names this machine."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _from_this_machine(headers: Headers) -> bool:
    """Refuse what a web page could send through the user's browser: a foreign Host
    (DNS rebinding) or a foreign Origin (cross-site POST). Either would spend the
    user's API key, which the proxy adds to every request."""
    if not _loopback_name(headers.get("host", "")):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and _loopback_name(rest.split("/")[0])


class _LoopbackClientsOnly:
    """Plain ASGI (not BaseHTTPMiddleware, which would hide a stream's failure)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not _from_this_machine(Headers(scope=scope)):
            refused = _error(403, "requests must come from this machine", "proxy_foreign_origin")
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _error_body(message: str, code: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "teellm_proxy_error", "param": None, "code": code}
    }


def _error_json(message: str, code: str) -> bytes:
    return json.dumps(_error_body(message, code)).encode()


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(_error_body(message, code), status_code=status)


def build_proxy_app(
    url: str,
    policy: ClientPolicy | str | Path,
    *,
    api_key: str | None = None,
    session: ServerSession | None = None,
    inner: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The proxy app. Verify first (``session`` already verified, or see :func:`serve`)."""
    session = session or ServerSession(url, policy)
    transport = AsyncVerifyingTransport(session, inner=inner)
    upstream = httpx.AsyncClient(transport=transport, timeout=UPSTREAM_TIMEOUT)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await upstream.aclose()

    app = FastAPI(
        title="teellm proxy", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.session = session

    app.add_middleware(_LoopbackClientsOnly)

    @app.get("/teellm/report")
    async def report() -> Response:
        """The last verification report of the upstream server."""
        if session.report is None:
            return _error(503, "not verified yet", "not_verified")
        return Response(session.report.to_json(), media_type="application/json")

    @app.api_route("/v1/{path:path}", methods=["GET", "POST"])
    async def forward(request: Request, path: str) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        if api_key and "authorization" not in {k.lower() for k in headers}:
            headers["authorization"] = f"Bearer {api_key}"
        body = await request.body()
        outgoing = upstream.build_request(
            request.method,
            session.url + "/v1/" + path,
            params=request.query_params,
            headers=headers,
            content=body if request.method == "POST" else None,
        )
        try:
            answer = await upstream.send(outgoing, stream=True)
        except TeellmError as exc:
            log.warning("upstream refused: %s", exc.code)
            return _error(502, f"upstream verification failed: {exc}", exc.code)
        except httpx.HTTPError as exc:
            log.warning("upstream unreachable: %s", type(exc).__name__)
            return _error(502, "upstream server unreachable", "upstream_unreachable")

        streaming = answer.headers.get("content-type", "").startswith("text/event-stream")

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_bytes():
                    yield chunk
            except TeellmError as exc:
                # Tell SSE clients why, then cut the connection: the client sees an
                # error and a broken stream, never forged or silently shortened data.
                log.warning("upstream answer rejected: %s", exc.code)
                if streaming:
                    yield b"data: " + _error_json(str(exc), exc.code) + b"\n\n"
                raise
            finally:
                await answer.aclose()

        out_headers: dict[str, Any] = {}
        for name in ("x-teellm-mode",):
            if name in answer.headers:
                out_headers[name] = answer.headers[name]
        return StreamingResponse(
            relay(),
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
            headers=out_headers,
        )

    return app


def serve(
    url: str,
    policy: ClientPolicy | str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
) -> None:
    """Verify ``url`` (raises :class:`VerificationFailed`), then serve until stopped."""
    import uvicorn

    check_loopback(host)
    session = ServerSession(url, policy)
    with httpx.HTTPTransport() as sync_transport:
        session.verify_with(sync_transport)
    app = build_proxy_app(url, session.policy, api_key=api_key, session=session)
    uvicorn.run(app, host=host, port=port, log_level="warning")
