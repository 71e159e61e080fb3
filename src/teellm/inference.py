"""The public in-process API, mirroring the seed's types (no HTTP involved).

    llm = LLMInference("tiny-llama", ModelSettings(precision="float32"), runtime="simulated")
    llm.load("bundle/", kbs_url="http://kbs:8600", trusted_publishers=["publisher.pub"])
    result = llm.infer(InferenceRequest(input=b"Hello", metadata=RequestMetadata(...)))

``load()`` runs the same boot sequence as ``teellm serve``: attest, have the key broker
release the content key (or use ``model_config.encryption_key`` when it is already
held), open the sealed bundle into protected memory, start and warm up the engine.

``infer()`` answers one request. With ``security_context.sealed_input`` the input is an
envelope sealed to this instance's attested key (see :meth:`LLMInference.public_keys`),
and the output is sealed to the response key inside it; with a ``response_key`` in the
security context a plaintext input gets a sealed output. Every result carries a
receipt signed with the attested signing key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from teellm.attestation.types import TEERuntime
from teellm.closing import Closing
from teellm.crypto import envelope, receipts
from teellm.crypto.hpke import Kem
from teellm.crypto.secret import SecretBytes
from teellm.errors import TeellmError
from teellm.settings import ModelSettings

INFERENCE_PATH = "/inference"


class InferenceError(TeellmError):
    """A request could not be served (bad input, access denied, not loaded)."""

    code = "inference_failed"


class Sampling(BaseModel):
    """Decoding parameters (OpenAI meanings; temperature 0 = greedy)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    max_tokens: int = Field(default=256, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(default=None, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)


class RequestMetadata(BaseModel):
    """Who asks and how: request id, tenant, sampling, stream flag, input kind.

    ``kind="completion"``: the input is UTF-8 prompt text. ``kind="chat"``: the input
    is a UTF-8 JSON list of ``{"role", "content"}`` messages.
    """

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(default_factory=lambda: f"req-{uuid.uuid4().hex}")
    tenant: str = "default"
    sampling: Sampling = Field(default_factory=Sampling)
    stream: bool = False
    kind: Literal["completion", "chat"] = "completion"


class SecurityContext(BaseModel):
    """The caller's identity, the response key and padding policy, the attestation nonce.

    ``caller`` is the caller's API token when ``ModelSettings.access_control`` is set
    (checked like the HTTP server does). ``response_key`` (32 bytes) seals the output;
    ``padding="bucket"`` pads sealed frames to power-of-two buckets (the envelope's
    only policy). ``attestation_nonce`` asks for a fresh attestation document binding
    it, returned with the result.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    caller: str | None = Field(default=None, repr=False)
    response_key: SecretBytes | None = Field(default=None, exclude=True, repr=False)
    padding: Literal["bucket"] = "bucket"
    attestation_nonce: bytes | None = Field(default=None, max_length=64)
    sealed_input: bool = False


class InferenceRequest(BaseModel):
    """One request: input bytes, metadata, security context (the seed's type)."""

    model_config = ConfigDict(extra="forbid")

    input: bytes = Field(repr=False, max_length=32 * 1024 * 1024)
    metadata: RequestMetadata = Field(default_factory=RequestMetadata)
    security_context: SecurityContext = Field(default_factory=SecurityContext)


@dataclass
class InferenceResult:
    """What :meth:`LLMInference.infer` returns.

    ``output`` is the generated UTF-8 text, or, when ``sealed``, the envelope response
    (header + frames) that only the response key opens. ``receipt`` signs the hashes of
    the plaintext input and output.
    """

    output: bytes = field(repr=False)
    sealed: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    receipt: receipts.Receipt
    attestation: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        if self.sealed:
            raise InferenceError("the output is sealed; open it with the response key")
        return self.output.decode()


@dataclass
class _Prepared:
    gen_req: Any
    plaintext: bytes = field(repr=False)
    sealer: envelope.ResponseSealer | None


class LLMInference(Closing):
    """A model served inside a TEE runtime, in process (the seed's type)."""

    def __init__(
        self,
        model_id: str,
        model_config: ModelSettings | None = None,
        runtime: TEERuntime | str = "auto",
    ) -> None:
        self.model_id = model_id
        self.model_config = model_config or ModelSettings()
        self._runtime_arg = runtime
        self._booted: Any = None  # teellm.server.boot.BootedServer-like state
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    def load(
        self,
        bundle_dir: str | Path,
        *,
        trusted_publishers: Sequence[Ed25519PublicKey | str | Path],
        kbs_url: str | None = None,
        min_version: int | None = None,
        kem: Kem = Kem.MLKEM768_X25519,
    ) -> LLMInference:
        """Attest, obtain the content key, open the bundle, warm the engine up."""
        from teellm.attestation.runtime import select
        from teellm.bundle.keys import load_public_key
        from teellm.server.boot import (
            SIMULATED_WARNING,
            Attestor,
            DocumentSource,
            _harden,
            open_model,
            protection_report,
            read_manifest,
            release_key,
            serving_config,
        )
        from teellm.server.identity import ServerIdentity

        with self._lock:
            if self._booted is not None:
                raise InferenceError("already loaded", code="already_loaded")
            runtime = (
                select(self._runtime_arg)
                if isinstance(self._runtime_arg, str)
                else self._runtime_arg
            )
            if runtime.kind == "simulated":
                logging.getLogger("teellm.server").warning(SIMULATED_WARNING)
            _harden()
            identity = ServerIdentity.generate(kem)
            bundle = Path(bundle_dir)
            manifest = read_manifest(bundle)
            if manifest.model_id != self.model_id:
                raise InferenceError(
                    f"the bundle holds model {manifest.model_id!r}, not {self.model_id!r}",
                    code="model_mismatch",
                )
            settings = self.model_config
            if settings.encryption_key is None:
                if not kbs_url:
                    raise InferenceError(
                        "no content key: set model_config.encryption_key or give kbs_url",
                        code="usage",
                    )
                settings.encryption_key = release_key(kbs_url, manifest, runtime)
            publishers = [
                p if isinstance(p, Ed25519PublicKey) else load_public_key(p)
                for p in trusted_publishers
            ]
            model = open_model(
                bundle,
                content_key=settings.encryption_key,
                trusted_publishers=publishers,
                settings=settings,
                expected_digest=manifest.digest(),
                min_version=min_version,
            )
            config = serving_config(
                runtime=runtime,
                settings=settings,
                plain_mode=False,
                max_body_bytes=envelope.MAX_REQUEST_SIZE,
                kem=kem,
            )
            docs = DocumentSource(
                Attestor(runtime, identity),
                manifest=manifest,
                serving_config=config,
                memory_protection=protection_report(model.bundle),
                plain_mode=False,
            )
            self._booted = _Loaded(identity=identity, manifest=manifest, model=model, docs=docs)
        return self

    def close(self) -> None:
        """Stop the engine, zeroize the weights and the content key."""
        with self._lock:
            booted, self._booted = self._booted, None
        if booted is not None:
            booted.model.close()
        if self.model_config.encryption_key is not None:
            self.model_config.encryption_key.zeroize()

    @property
    def loaded(self) -> _Loaded:
        if self._booted is None:
            raise InferenceError("call load() first", code="not_loaded")
        loaded: _Loaded = self._booted
        return loaded

    def attestation(self, nonce: bytes | None = None) -> dict[str, Any]:
        """The attestation document (JSON object), fresh when ``nonce`` is given."""
        return self.loaded.docs(nonce)

    @property
    def public_keys(self) -> dict[str, bytes]:
        """The attested HPKE and Ed25519 public keys, and the key id requests name."""
        ident = self.loaded.identity
        return {"hpke": ident.hpke_public, "signing": ident.signing_public, "key_id": ident.key_id}

    # ------------------------------------------------------------ inference

    def infer(self, request: InferenceRequest) -> InferenceResult:
        """Answer ``request`` to completion (blocking; safe from several threads)."""
        return asyncio.run(self.infer_async(request))

    async def infer_async(self, request: InferenceRequest) -> InferenceResult:
        """Answer ``request`` to completion."""
        loaded = self.loaded
        prep = self._prepare(request)
        parts: list[str] = []
        finish: str | None = None
        usage: Any = None
        async for delta in loaded.model.engine.stream(prep.gen_req):
            parts.append(delta.text)
            finish = delta.finish_reason or finish
            usage = delta.usage or usage
        text = "".join(parts).encode()
        receipt = self._receipt(prep.plaintext, envelope.sha256(text))
        output = text if prep.sealer is None else prep.sealer.seal_all(text, receipt.to_bytes())
        return InferenceResult(
            output=output,
            sealed=prep.sealer is not None,
            finish_reason=finish,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            receipt=receipt,
            attestation=self._fresh_document(request),
        )

    async def stream(self, request: InferenceRequest) -> AsyncIterator[bytes]:
        """Yield the output as it is generated: UTF-8 text pieces, or, sealed, the
        envelope header, one frame per piece and the FINAL frame with the receipt.
        (Unsealed streams carry no receipt; :meth:`infer` returns one.)"""
        loaded = self.loaded
        prep = self._prepare(request)
        if prep.sealer is not None:
            yield prep.sealer.header
        async for delta in loaded.model.engine.stream(prep.gen_req):
            if delta.text:
                piece = delta.text.encode()
                yield piece if prep.sealer is None else prep.sealer.seal(piece)
        if prep.sealer is not None:
            receipt = self._receipt(prep.plaintext, prep.sealer.response_hash)
            yield prep.sealer.finish(receipt.to_bytes())

    # ------------------------------------------------------------ helpers

    def _prepare(self, request: InferenceRequest) -> _Prepared:
        from teellm.engine import GenerationRequest, SamplingParams

        loaded = self.loaded
        ctx = request.security_context
        meta = request.metadata
        tenant = meta.tenant
        policy = self.model_config.access_control
        caller = None
        if policy is not None:
            caller = policy.authenticate(ctx.caller)
            policy.check_rate(caller)
            policy.authorize(caller, model_id=self.model_id, max_tokens=meta.sampling.max_tokens)
            tenant = caller.name
        sealer: envelope.ResponseSealer | None = None
        if ctx.sealed_input:
            try:
                opened = envelope.open_request(
                    request.input, loaded.identity.hpke, server_key_id=loaded.identity.key_id
                )
            except envelope.EnvelopeError as exc:
                raise InferenceError(
                    "the input envelope could not be opened", code=exc.code
                ) from None
            if opened.path != INFERENCE_PATH:
                raise InferenceError("the envelope names another endpoint", code="path_mismatch")
            plaintext = opened.body
            sealer = opened.sealer(envelope.ResponseContent.JSON)
        else:
            plaintext = request.input
            if ctx.response_key is not None:
                if len(ctx.response_key) != envelope.RESPONSE_KEY_SIZE:
                    raise InferenceError("response key must be 32 bytes", code="bad_response_key")
                binding = envelope.sha256(plaintext)
                sealer = envelope.ResponseSealer(
                    ctx.response_key, binding, envelope.ResponseContent.JSON
                )
        prompt, messages = _decode_input(plaintext, meta.kind)
        try:
            gen_req = GenerationRequest(
                request_id=meta.request_id,
                tenant=tenant,
                prompt=prompt,
                messages=messages,
                sampling=SamplingParams(**meta.sampling.model_dump()),
            )
        except ValidationError:
            raise InferenceError("invalid sampling parameters", code="invalid_request") from None
        n = loaded.model.engine.count_prompt_tokens(gen_req)
        if policy is not None and caller is not None:
            policy.authorize(caller, model_id=self.model_id, input_length=n)
        return _Prepared(gen_req=gen_req, plaintext=plaintext, sealer=sealer)

    def _receipt(self, request_body: bytes, response_hash: bytes) -> receipts.Receipt:
        loaded = self.loaded
        return receipts.sign_receipt(
            loaded.identity.signing,
            request_hash=envelope.sha256(request_body),
            response_hash=response_hash,
            model_digest=loaded.manifest.digest(),
        )

    def _fresh_document(self, request: InferenceRequest) -> dict[str, Any] | None:
        nonce = request.security_context.attestation_nonce
        return self.attestation(nonce) if nonce else None


@dataclass
class _Loaded:
    identity: Any
    manifest: Any
    model: Any
    docs: Any


def _decode_input(data: bytes, kind: str) -> tuple[str | None, list[dict[str, str]] | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InferenceError("input is not UTF-8", code="invalid_request") from None
    if kind == "completion":
        return text, None
    try:
        messages = json.loads(text)
    except (ValueError, RecursionError):
        raise InferenceError("chat input is not JSON", code="invalid_request") from None
    if (
        not isinstance(messages, list)
        or not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            and set(m) <= {"role", "content", "name"}
            for m in messages
        )
        or not messages
    ):
        raise InferenceError(
            "chat input must be a JSON list of {role, content} messages", code="invalid_request"
        )
    return None, messages


__all__ = [
    "InferenceError",
    "InferenceRequest",
    "InferenceResult",
    "LLMInference",
    "ModelSettings",
    "RequestMetadata",
    "Sampling",
    "SecurityContext",
]
