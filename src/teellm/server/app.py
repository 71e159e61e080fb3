"""The FastAPI app: attestation document, OpenAI API, E2E envelope, access control.

Request path: ready (503) -> API token (401) -> rate (429) -> size-limited body
(413) -> open the envelope (or plain mode, only when enabled) (400) -> strict
parse (400) -> model (404) -> tenant limits (403) -> input length (400/403) ->
engine. Every answer is sealed to the response key from the request and carries
a receipt signed with the attested signing key.

Nothing here logs or labels request content: errors carry fixed messages, and
the only log lines are event names with sizes and codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from teellm.crypto import envelope, receipts
from teellm.errors import TeellmError
from teellm.server.access import AccessPolicy, RateLimiter, Tenant
from teellm.server.errors import ApiError, error_body, from_teellm_error
from teellm.server.identity import ServerIdentity
from teellm.server.metrics import ServerMetrics
from teellm.server.openai_api import (
    SSE_DONE,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    Usage,
    chat_chunk,
    chat_completion,
    new_id,
    now,
    parse_request,
    sse,
    text_completion,
)

log = logging.getLogger("teellm.server")

MAX_NONCE_BYTES = 64
RECEIPT_HEADER = receipts.RECEIPT_HEADER


class EngineLike(Protocol):
    """What the app needs from ``teellm.engine.Engine``."""

    @property
    def model_id(self) -> str: ...

    @property
    def max_input_length(self) -> int: ...

    def count_prompt_tokens(self, req: Any) -> int: ...

    def stream(self, req: Any) -> AsyncGenerator[Any, None]: ...


@dataclass
class ServerLimits:
    max_body_bytes: int = 1 << 20
    attestation_per_minute: int = 120
    default_max_tokens: int = 256


@dataclass
class ServerContext:
    """Everything the app serves with; built by :mod:`teellm.server.boot`."""

    engine: EngineLike
    access: AccessPolicy
    identity: ServerIdentity
    model_digest: bytes
    attestation: Callable[[bytes | None], dict[str, Any]]
    plain_allowed: bool = False
    owned_by: str = "teellm"
    limits: ServerLimits = field(default_factory=ServerLimits)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    ready: bool = False
    simulated: bool = False
    make_request: Callable[..., Any] | None = None  # engine GenerationRequest factory
    make_sampling: Callable[..., Any] | None = None  # engine SamplingParams factory

    @property
    def model_id(self) -> str:
        return self.engine.model_id


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError("invalid Content-Length", code="invalid_request")
        if int(declared) > limit:
            raise ApiError(
                f"request body exceeds {limit} bytes", status=413, code="payload_too_large"
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                f"request body exceeds {limit} bytes", status=413, code="payload_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


@dataclass
class _Call:
    """One API call after access checks and envelope opening."""

    tenant: Tenant
    raw: bytes  # plaintext request JSON
    opened: envelope.OpenedRequest | None  # None in plain mode
    started: float

    @property
    def mode(self) -> str:
        return "plain" if self.opened is None else "e2e"


def create_app(ctx: ServerContext) -> FastAPI:
    """The ASGI app serving ``ctx``."""
    app = FastAPI(title="teellm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    attest_limiter = RateLimiter(time.monotonic)
    metrics = ctx.metrics

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = "not found" if exc.status_code == 404 else "request not allowed"
        return _error(ApiError(msg, status=exc.status_code, code=f"http_{exc.status_code}"))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(ApiError("invalid request parameters", code="invalid_request"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The type only: a message could carry request content.
        log.error("unexpected error type=%s", type(exc).__name__)
        return _error(ApiError("internal error", status=500, code="internal_error"))

    # ------------------------------------------------------------ health

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not ctx.ready:
            raise ApiError("not ready", status=503, code="not_ready")
        return JSONResponse({"status": "ready", "model": ctx.model_id})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    # ------------------------------------------------------------ attestation

    @app.get("/v1/attestation")
    async def attestation(request: Request, nonce: str | None = None) -> JSONResponse:
        nonce_bytes: bytes | None = None
        if nonce is not None:
            try:
                nonce_bytes = bytes.fromhex(nonce)
            except ValueError:
                raise ApiError("nonce must be hex", code="invalid_nonce", param="nonce") from None
            if not 1 <= len(nonce_bytes) <= MAX_NONCE_BYTES:
                raise ApiError(
                    f"nonce must be 1 to {MAX_NONCE_BYTES} bytes",
                    code="invalid_nonce",
                    param="nonce",
                )
            # Per client address, so one caller cannot use up everyone's verifications.
            client = request.client.host if request.client else "-"
            wait = attest_limiter.take(client, ctx.limits.attestation_per_minute)
            if wait > 0:
                raise ApiError(
                    "too many fresh attestation requests",
                    status=429,
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, round(wait + 0.5)))},
                )
        # Fresh evidence may take a while on hardware: keep the event loop free.
        doc = await asyncio.to_thread(ctx.attestation, nonce_bytes)
        metrics.attestations.labels(kind="fresh" if nonce_bytes else "boot").inc()
        return JSONResponse(doc, headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------ models

    def _check_ready() -> None:
        if not ctx.ready:
            raise ApiError("server is starting", status=503, code="not_ready")

    def _authenticate(request: Request) -> Tenant:
        try:
            tenant = ctx.access.authenticate(_bearer(request))
            ctx.access.check_rate(tenant)
        except ApiError as exc:
            metrics.access_denied.labels(code=exc.code).inc()
            raise
        return tenant

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        tenant = _authenticate(request)
        cards = []
        if tenant.may_use(ctx.model_id):
            cards.append(ModelCard(id=ctx.model_id, created=0, owned_by=ctx.owned_by))
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: Request) -> JSONResponse:
        tenant = _authenticate(request)
        if model_id != ctx.model_id or not tenant.may_use(model_id):
            raise ApiError("model not found", status=404, code="model_not_found", param="model")
        return JSONResponse(ModelCard(id=model_id, created=0, owned_by=ctx.owned_by).model_dump())

    # ------------------------------------------------------------ generation

    async def _begin(request: Request) -> _Call:
        started = time.perf_counter()
        _check_ready()
        tenant = _authenticate(request)
        body = await _read_body(request, ctx.limits.max_body_bytes)
        content_type = request.headers.get("content-type", "")
        opened: envelope.OpenedRequest | None = None
        if content_type.split(";")[0].strip().lower() == envelope.MEDIA_TYPE:
            try:
                opened = envelope.open_request(
                    body, ctx.identity.hpke, server_key_id=ctx.identity.key_id
                )
            except envelope.KeyMismatchError:
                raise ApiError(
                    "request is sealed to another server key; fetch the attestation again",
                    code="key_id_mismatch",
                    headers={envelope.KEY_ID_HEADER: ctx.identity.key_id.hex()},
                ) from None
            except TeellmError as exc:
                # The envelope's own code (envelope_malformed, envelope_decrypt_failed...).
                raise ApiError("the request envelope could not be opened", code=exc.code) from None
            if opened.path != request.url.path:
                raise ApiError(
                    "the sealed request names another endpoint", code="envelope_path_mismatch"
                )
            raw = opened.body
        elif ctx.plain_allowed:
            raw = body
        else:
            raise ApiError(
                "this server accepts only end-to-end encrypted requests "
                f"(Content-Type: {envelope.MEDIA_TYPE})",
                code="plain_mode_disabled",
            )
        return _Call(tenant=tenant, raw=raw, opened=opened, started=started)

    def _check_model(call: _Call, model_id: str, max_tokens: int | None) -> int:
        if model_id != ctx.model_id:
            raise ApiError("model not found", status=404, code="model_not_found", param="model")
        ctx.access.authorize(call.tenant, model_id=model_id, max_tokens=max_tokens)
        if max_tokens is None:
            return min(ctx.limits.default_max_tokens, call.tenant.max_tokens)
        return max_tokens

    def _check_input(call: _Call, gen_req: Any) -> int:
        n = ctx.engine.count_prompt_tokens(gen_req)
        limit = ctx.engine.max_input_length
        if n > limit:
            raise ApiError(
                f"input is {n} tokens long; the maximum input length is {limit} tokens",
                code="context_length_exceeded",
                param="messages",
            )
        ctx.access.authorize(call.tenant, model_id=ctx.model_id, input_length=n)
        return n

    def _gen_request(call: _Call, *, prompt: str | None, messages: Any, sampling: Any) -> Any:
        assert ctx.make_request is not None and ctx.make_sampling is not None
        try:
            return ctx.make_request(
                request_id=new_id("req"),
                tenant=call.tenant.name,
                prompt=prompt,
                messages=messages,
                sampling=ctx.make_sampling(**sampling),
            )
        except ValidationError as exc:
            # The engine's own limits (seed range, stop count...): name the field only.
            errors = exc.errors(include_input=False, include_url=False)
            loc = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None
            raise ApiError(
                f"invalid request: {loc or 'parameters'} is out of range",
                code="invalid_request",
                param=loc,
            ) from None

    def _finish(call: _Call, endpoint: str, status: int) -> None:
        metrics.requests.labels(endpoint=endpoint, status=str(status), mode=call.mode).inc()
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - call.started)

    async def _generate(
        call: _Call,
        endpoint: str,
        gen_req: Any,
        *,
        stream: bool,
        include_usage: bool,
        render_chunk: Callable[..., dict[str, Any]],
        render_final: Callable[[str, str | None, Usage | None], dict[str, Any]],
    ) -> Response:
        if not stream:
            return await _complete(call, endpoint, gen_req, render_final)
        return StreamingResponse(
            _stream(call, endpoint, gen_req, include_usage, render_chunk),
            media_type="text/event-stream" if call.opened is None else envelope.MEDIA_TYPE,
            headers={"Cache-Control": "no-store", "X-Teellm-Mode": call.mode},
        )

    def _receipt(call: _Call, response_hash: bytes) -> receipts.Receipt:
        return receipts.sign_receipt(
            ctx.identity.signing,
            request_hash=envelope.sha256(call.raw),
            response_hash=response_hash,
            model_digest=ctx.model_digest,
        )

    async def _complete(
        call: _Call,
        endpoint: str,
        gen_req: Any,
        render_final: Callable[[str, str | None, Usage | None], dict[str, Any]],
    ) -> Response:
        parts: list[str] = []
        finish: str | None = None
        usage: Usage | None = None
        first = True
        metrics.in_flight.inc()
        try:
            async with contextlib.aclosing(ctx.engine.stream(gen_req)) as deltas:
                async for delta in deltas:
                    if first and delta.token_ids:
                        metrics.ttft.observe(time.perf_counter() - call.started)
                        first = False
                    parts.append(delta.text)
                    if delta.finish_reason is not None:
                        finish = delta.finish_reason
                    if delta.usage is not None:
                        usage = Usage(**_usage_dict(delta.usage))
        except TeellmError as exc:
            raise from_teellm_error(exc) from None
        finally:
            metrics.in_flight.dec()
        _count_tokens(call, usage)
        body = _json_bytes(render_final("".join(parts), finish, usage))
        receipt = _receipt(call, envelope.sha256(body))
        headers = {"X-Teellm-Mode": call.mode}
        _finish(call, endpoint, 200)
        if call.opened is None:
            headers[RECEIPT_HEADER] = receipt.to_header()
            return Response(body, media_type="application/json", headers=headers)
        # E2E: the receipt only inside the FINAL frame. Its plaintext hashes in a
        # header would let anyone on the path confirm a guessed prompt or answer.
        sealer = call.opened.sealer(envelope.ResponseContent.JSON)
        return Response(
            sealer.seal_all(body, receipt.to_bytes()),
            media_type=envelope.MEDIA_TYPE,
            headers=headers,
        )

    async def _stream(
        call: _Call,
        endpoint: str,
        gen_req: Any,
        include_usage: bool,
        render_chunk: Callable[..., dict[str, Any]],
    ) -> AsyncIterator[bytes]:
        sealer = (
            None
            if call.opened is None
            else call.opened.sealer(envelope.ResponseContent.EVENT_STREAM)
        )
        plain_hash = hashlib.sha256()

        def emit(event: bytes) -> bytes:
            if sealer is None:
                plain_hash.update(event)
                return event
            return sealer.seal(event)

        def close(receipt: bytes) -> bytes:
            # E2E: the FINAL frame carries the receipt. Plain: a last SSE event does,
            # covering every byte before it.
            if sealer is None:
                return b"event: receipt\ndata: " + receipt + b"\n\n"
            return sealer.finish(receipt)

        def response_hash() -> bytes:
            return plain_hash.digest() if sealer is None else sealer.response_hash

        status = 200
        metrics.in_flight.inc()
        try:
            if sealer is not None:
                yield sealer.header
            yield emit(sse(render_chunk(role=True, text="")))
            first = True
            usage: Usage | None = None
            async with contextlib.aclosing(ctx.engine.stream(gen_req)) as deltas:
                async for delta in deltas:
                    if first and delta.token_ids:
                        metrics.ttft.observe(time.perf_counter() - call.started)
                        first = False
                    if delta.usage is not None:
                        usage = Usage(**_usage_dict(delta.usage))
                    if delta.text or delta.finish_reason is not None:
                        yield emit(
                            sse(render_chunk(text=delta.text, finish_reason=delta.finish_reason))
                        )
            if include_usage and usage is not None:
                yield emit(sse(render_chunk(usage=usage, choices=False)))
            _count_tokens(call, usage)
            yield emit(SSE_DONE)
            yield close(_receipt(call, response_hash()).to_bytes())
        except Exception as exc:
            err = _as_api_error(exc)
            status = err.status
            log.info("stream failed endpoint=%s code=%s", endpoint, err.code)
            yield emit(sse(err.body()))
            yield close(_receipt(call, response_hash()).to_bytes())
        finally:
            metrics.in_flight.dec()
            _finish(call, endpoint, status)

    def _count_tokens(call: _Call, usage: Usage | None) -> None:
        if usage is None:
            return
        metrics.count_tokens("prompt", usage.prompt_tokens)
        metrics.count_tokens("completion", usage.completion_tokens)

    async def _guarded(
        call_endpoint: str, request: Request, handler: Callable[[_Call], Awaitable[Response]]
    ) -> Response:
        call: _Call | None = None
        try:
            call = await _begin(request)
            return await handler(call)
        except Exception as exc:
            api = _as_api_error(exc)
            mode = call.mode if call is not None else "-"
            metrics.requests.labels(endpoint=call_endpoint, status=str(api.status), mode=mode).inc()
            log.info(
                "request refused endpoint=%s status=%d code=%s", call_endpoint, api.status, api.code
            )
            if call is None or call.opened is None:
                return _error(api)
            # After decryption an error is an answer like any other: sealed, so that
            # what it says (a token count, a field name) stays between client and TEE.
            body = _json_bytes(api.body())
            receipt = _receipt(call, envelope.sha256(body))
            sealer = call.opened.sealer(envelope.ResponseContent.JSON)
            return Response(
                sealer.seal_all(body, receipt.to_bytes()),
                status_code=api.status,
                media_type=envelope.MEDIA_TYPE,
                headers={**api.headers, "X-Teellm-Mode": call.mode},
            )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        async def handle(call: _Call) -> Response:
            req = parse_request(ChatCompletionRequest, call.raw)
            max_tokens = _check_model(call, req.model, req.requested_max_tokens())
            gen_req = _gen_request(
                call,
                prompt=None,
                messages=req.engine_messages(),
                sampling=req.sampling_kwargs(max_tokens),
            )
            _check_input(call, gen_req)
            rid, created, model_id = new_id("chatcmpl"), now(), ctx.model_id

            def render_chunk(**kw: Any) -> dict[str, Any]:
                return chat_chunk(id=rid, model=model_id, created=created, **kw)

            def render_final(text: str, finish: str | None, usage: Usage | None) -> dict[str, Any]:
                return chat_completion(
                    id=rid, model=model_id, created=created, text=text,
                    finish_reason=finish, usage=usage,
                )  # fmt: skip

            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await _generate(
                call, "chat", gen_req, stream=req.stream, include_usage=include_usage,
                render_chunk=render_chunk, render_final=render_final,
            )  # fmt: skip

        return await _guarded("chat", request, handle)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        async def handle(call: _Call) -> Response:
            req = parse_request(CompletionRequest, call.raw)
            max_tokens = _check_model(call, req.model, req.requested_max_tokens())
            gen_req = _gen_request(
                call,
                prompt=req.prompt_text(),
                messages=None,
                sampling=req.sampling_kwargs(max_tokens),
            )
            _check_input(call, gen_req)
            rid, created, model_id = new_id("cmpl"), now(), ctx.model_id

            def render_chunk(
                *,
                text: str | None = None,
                role: bool = False,
                finish_reason: str | None = None,
                usage: Usage | None = None,
                choices: bool = True,
            ) -> dict[str, Any]:
                body = text_completion(
                    id=rid, model=model_id, created=created, text=text or "",
                    finish_reason=finish_reason, usage=usage, chunk=True,
                )  # fmt: skip
                if not choices:
                    body["choices"] = []
                return body

            def render_final(text: str, finish: str | None, usage: Usage | None) -> dict[str, Any]:
                return text_completion(
                    id=rid, model=model_id, created=created, text=text,
                    finish_reason=finish, usage=usage,
                )  # fmt: skip

            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await _generate(
                call, "completions", gen_req, stream=req.stream, include_usage=include_usage,
                render_chunk=render_chunk, render_final=render_final,
            )  # fmt: skip

        return await _guarded("completions", request, handle)

    return app


def _as_api_error(exc: Exception) -> ApiError:
    """The API error for a failure while serving a request.

    Anything untyped is a bug whose message may quote the request: it is logged by
    type only and answered as an internal error, never re-raised (the ASGI server
    would log it with its message and traceback, and the answer would go unsealed).
    """
    if isinstance(exc, TeellmError):
        return from_teellm_error(exc)
    log.error("unexpected error type=%s", type(exc).__name__)
    return ApiError("internal error", status=500, code="internal_error")


def _usage_dict(usage: Any) -> dict[str, int]:
    return {
        "prompt_tokens": int(usage.prompt_tokens),
        "completion_tokens": int(usage.completion_tokens),
        "total_tokens": int(usage.total_tokens),
    }


def _json_bytes(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


__all__ = [
    "EngineLike",
    "StartingApp",
    "ServerContext",
    "ServerLimits",
    "create_app",
    "error_body",
]


class StartingApp:
    """The ASGI app while the server boots, then the real one.

    HTTP is up from the first second so that orchestrators see the process alive:
    ``/healthz`` answers 200, ``/readyz`` and every API route 503 until
    :meth:`ready` installs the booted app. The boot itself (key release, bundle
    load, warm-up) runs beside it.
    """

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    def ready(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is not None:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            status, body = 200, {"status": "starting"}
        else:
            status, body = 503, error_body("server is starting", status=503, code="not_ready")
        response = JSONResponse(body, status_code=status, headers={"Retry-After": "1"})
        await response(scope, receive, send)
