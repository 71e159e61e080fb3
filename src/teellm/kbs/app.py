"""The broker's HTTP API (FastAPI): the key-release protocol, admin API, metrics.

Handlers are plain functions, so FastAPI runs them in its thread pool: the store
and the verifiers are blocking code. Errors always come back as
``{"error": {"code", "message", "reasons", "codes"}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from teellm.crypto.secret import SecretBytes
from teellm.kbs.admin import META_KEY, check_token
from teellm.kbs.broker import KeyBroker
from teellm.kbs.errors import (
    AdminAuthError,
    KbsError,
    KeyReleaseDenied,
    ProtocolError,
    RateLimited,
)
from teellm.kbs.policy import ReleasePolicy
from teellm.kbs.protocol import (
    MAX_MODEL_ID,
    MAX_VERSION,
    AttestRequest,
    AttestResponse,
    ChallengeRequest,
    ChallengeResponse,
    decode_hex,
)

log = logging.getLogger("teellm.kbs")

# Admin input errors (bad policy, bad key): the caller's fault, answered with 400.
_CLIENT_ERRORS = {"policy_invalid", "key_invalid", "manifest_digest_invalid"}


class PutKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=64, max_length=64)  # hex of the 32-byte content key
    manifest_digest: str | None = Field(default=None, min_length=64, max_length=64)
    replace: bool = False


class PutPolicyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: dict[str, Any]
    version: int | None = Field(default=None, ge=0, le=MAX_VERSION)


def _error(status: int, exc: KbsError, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": exc.code, "message": str(exc)}
    if isinstance(exc, KeyReleaseDenied):
        body["message"] = "key release denied"
        body["reasons"] = exc.reasons
        body["codes"] = exc.codes
    return JSONResponse({"error": body}, status_code=status, headers=headers)


MAX_BODY = 1 << 20  # evidence with TDX collateral is tens of KiB; nothing needs more


class _BodyLimit:
    """Refuse request bodies over ``MAX_BODY`` bytes, declared or streamed (413)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > MAX_BODY:
            await _send_too_large(send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise ProtocolError("request body too large", code="body_too_large")
            return message

        try:
            await self.app(scope, limited, send)
        except ProtocolError:
            await _send_too_large(send)


async def _send_too_large(send: Any) -> None:
    body = b'{"error":{"code":"body_too_large","message":"request body too large"}}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def create_app(
    broker: KeyBroker,
    *,
    admin_token_hashes: list[str] | None = None,
    local_admin: bool = False,
) -> FastAPI:
    """The HTTP app for ``broker``. Admin calls need a bearer token whose hash is listed
    in ``admin_token_hashes`` or stored in the broker's database; with ``local_admin``
    (an app served only on a 0600 unix socket) the socket's permissions are the check."""
    app = FastAPI(title="teellm key broker", docs_url=None, redoc_url=None, openapi_url=None)
    static_hashes = list(admin_token_hashes or [])
    app.add_middleware(_BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the fields only: never echo the submitted values back.
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        err = ProtocolError(f"malformed request: {', '.join(fields)[:300]}")
        return _error(400, err)

    @app.exception_handler(KbsError)
    async def _kbs_error(request: Request, exc: KbsError) -> JSONResponse:
        if isinstance(exc, KeyReleaseDenied):
            return _error(403, exc)
        if isinstance(exc, RateLimited):
            return _error(429, exc, {"Retry-After": str(int(exc.retry_after_s) + 1)})
        if isinstance(exc, AdminAuthError):
            return _error(401, exc, {"WWW-Authenticate": "Bearer"})
        if isinstance(exc, ProtocolError) or exc.code in _CLIENT_ERRORS:
            return _error(400, exc)
        if exc.code == "key_exists":
            return _error(409, exc)
        log.error("key broker error: %s", exc.code)
        return _error(503 if exc.code.startswith("store") else 500, exc)

    def require_admin(request: Request) -> str:
        if local_admin:
            return "admin@local-socket"
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        hashes = list(static_hashes)
        stored = broker.store.get_meta(META_KEY)
        if stored:
            hashes.append(stored)
        check_token(token.strip() if scheme.lower() == "bearer" else None, hashes)
        return f"admin@{_client(request)}"

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/challenge", response_model=ChallengeResponse)
    def challenge(body: ChallengeRequest, request: Request) -> ChallengeResponse:
        return broker.challenge(body, _client(request))

    @app.post("/v1/attest", response_model=AttestResponse)
    def attest(body: AttestRequest, request: Request) -> AttestResponse:
        return broker.attest(body, _client(request))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(broker.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- admin -------------------------------------------------------------------------

    @app.get("/v1/admin/keys")
    def list_keys(request: Request) -> list[dict[str, Any]]:
        require_admin(request)
        return [
            {
                "model_id": k.model_id,
                "version": k.version,
                "master_key_id": k.master_key_id,
                "manifest_digest": k.manifest_digest,
                "created_at": k.created_at,
            }
            for k in broker.list_keys()
        ]

    @app.put("/v1/admin/keys/{model_id}/{version}", status_code=201)
    def put_key(model_id: str, version: int, body: PutKeyBody, request: Request) -> dict[str, Any]:
        actor = require_admin(request)
        if not 0 < len(model_id) <= MAX_MODEL_ID or not 0 <= version <= MAX_VERSION:
            raise ProtocolError("bad model id or version")
        key = SecretBytes(bytearray(decode_hex(body.key, "key", max_bytes=32)), label="content key")
        digest = (
            decode_hex(body.manifest_digest, "manifest_digest", max_bytes=32)
            if body.manifest_digest
            else None
        )
        with key:
            broker.put_key(
                model_id, version, key, manifest_digest=digest, replace=body.replace, actor=actor
            )
        return {"model_id": model_id, "version": version, "stored": True}

    @app.get("/v1/admin/policies")
    def list_policies(request: Request) -> list[dict[str, Any]]:
        require_admin(request)
        import json

        return [
            {
                "model_id": p.model_id,
                "version": p.version,
                "min_version": p.min_version,
                "policy": json.loads(p.policy),
                "updated_at": p.updated_at,
            }
            for p in broker.store.list_policies()
        ]

    @app.put("/v1/admin/policies/{model_id}")
    def put_policy(model_id: str, body: PutPolicyBody, request: Request) -> dict[str, Any]:
        actor = require_admin(request)
        if not 0 < len(model_id) <= MAX_MODEL_ID:
            raise ProtocolError("bad model id")
        policy = ReleasePolicy.from_data(body.policy)
        broker.set_policy(model_id, policy, version=body.version, actor=actor)
        return {
            "model_id": model_id,
            "version": body.version,
            "policy": policy.model_dump(mode="json"),
        }

    @app.get("/v1/admin/audit")
    def audit(request: Request, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        require_admin(request)
        limit = max(1, min(limit, 10_000))
        after = max(0, min(after, MAX_VERSION))  # database integers are 64-bit
        return [
            r.model_dump(mode="json")
            for r in broker.store.audit_records(after_seq=after, limit=limit)
        ]

    @app.get("/v1/admin/audit/verify")
    def audit_verify(request: Request) -> dict[str, Any]:
        require_admin(request)
        return broker.verify_audit().to_json()

    return app
