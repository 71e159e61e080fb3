"""The boot sequence of a confidential server.

runtime -> identity keys -> boot evidence binding the keys, the model manifest
digest and the serving configuration -> content key released by the key broker
against that evidence -> sealed bundle opened into protected memory -> engine
started and warmed up -> ready.

Outside a TEE the runtime selection refuses (``--tee auto``); ``--tee simulated``
runs anyway, warns on every start and marks every attestation document simulated.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from teellm import __version__
from teellm.attestation.types import TEERuntime, TeeType
from teellm.crypto.hpke import Kem
from teellm.crypto.secret import SecretBytes
from teellm.errors import TeellmError
from teellm.server.identity import ServerIdentity
from teellm.settings import ModelSettings

log = logging.getLogger("teellm.server")

REPORT_PURPOSE = "teellm/server"
SIMULATED_WARNING = (
    "SIMULATED TEE: this server has no hardware protection; every attestation "
    "document it serves is marked simulated. Never use it with real data."
)


class BootError(TeellmError):
    """The server could not boot (no TEE, key denied, bad bundle...)."""

    code = "boot_failed"


def serving_config(
    *,
    runtime: TEERuntime,
    settings: ModelSettings,
    plain_mode: bool,
    max_body_bytes: int,
    kem: Kem,
) -> dict[str, Any]:
    """The serving configuration the evidence binds (public, no secrets)."""
    return {
        "v": 1,
        "teellm_version": __version__,
        "tee": str(runtime.kind),
        "simulated": runtime.kind == TeeType.SIMULATED,
        "plain_mode": plain_mode,
        "e2e_required": not plain_mode,
        "kem": kem.value,
        "batch_size": settings.batch_size,
        "precision": settings.precision,
        "max_input_length": settings.max_input_length,
        "max_body_bytes": max_body_bytes,
    }


@dataclass
class Attestor:
    """The runtime and identity a server attests with."""

    runtime: TEERuntime
    identity: ServerIdentity

    @property
    def simulated(self) -> bool:
        return self.runtime.kind == TeeType.SIMULATED


@dataclass
class OpenedModel:
    """A model opened inside the TEE: manifest, plaintext in protected memory, engine."""

    manifest: Any
    bundle: Any  # teellm.bundle.loader.LoadedBundle
    engine: Any  # teellm.engine.Engine
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Stop the engine, then zeroize and unmap the plaintext weights."""
        if self._closed:
            return
        self._closed = True
        try:
            self.engine.stop()
        finally:
            self.bundle.close()


def read_manifest(bundle_dir: Path) -> Any:
    from teellm.bundle.manifest import read_manifest as _read

    return _read(bundle_dir)


def load_publishers(paths: Sequence[Path]) -> list[Ed25519PublicKey]:
    from teellm.bundle.keys import load_public_key

    return [load_public_key(p) for p in paths]


def release_key(
    kbs_url: str, manifest: Any, runtime: TEERuntime, *, timeout: float = 30.0
) -> SecretBytes:
    """Ask the key broker for the content key, presenting fresh evidence."""
    from teellm.kbs.client import KeyBrokerClient

    client = KeyBrokerClient(kbs_url, timeout=timeout)
    key: SecretBytes = client.fetch_key(
        manifest.model_id, manifest.version, runtime, manifest_digest=manifest.digest()
    )
    return key


def open_model(
    bundle_dir: Path,
    *,
    content_key: SecretBytes,
    trusted_publishers: Sequence[Ed25519PublicKey],
    settings: ModelSettings,
    expected_digest: bytes,
    min_version: int | None = None,
    warm_up: bool = True,
) -> OpenedModel:
    """Open the sealed bundle whose manifest digest is ``expected_digest`` (the one
    attested and released for) into protected memory; start a warmed-up engine."""
    from teellm.bundle.loader import load_bundle
    from teellm.engine import Engine
    from teellm.engine.source import ModelSource

    loaded = load_bundle(
        bundle_dir,
        content_key=content_key,
        trusted_publishers=list(trusted_publishers),
        min_version=min_version,
        expected_digest=expected_digest,
    )
    try:
        engine = Engine(
            ModelSource.from_bundle(loaded), settings, model_id=loaded.manifest.model_id
        )
        engine.start()
    except BaseException:
        loaded.close()
        raise
    model = OpenedModel(manifest=loaded.manifest, bundle=loaded, engine=engine)
    if warm_up:
        try:
            _warm_up(engine)
        except BaseException:
            model.close()
            raise
    return model


def _warm_up(engine: Any) -> None:
    from teellm.engine import GenerationRequest, SamplingParams

    engine.generate(
        GenerationRequest(
            request_id="warm-up",
            tenant="-",
            prompt="warm up",
            messages=None,
            sampling=SamplingParams(max_tokens=2),
        )
    )


def protection_report(bundle: Any) -> dict[str, Any]:
    report = getattr(bundle, "protection", None)
    return report.model_dump() if report is not None else {}


@dataclass
class DocumentSource:
    """Serves attestation documents: the boot one cached, fresh ones (nonce) on demand.

    The document's evidence binds the identity keys, the manifest digest and the
    serving configuration (see :func:`teellm.server.document.expected_report_data`).
    """

    attestor: Attestor
    manifest: Any
    serving_config: dict[str, Any]
    memory_protection: dict[str, Any]
    plain_mode: bool
    _boot: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def build(self, nonce: bytes) -> dict[str, Any]:
        from teellm.server.document import build_document

        doc = build_document(
            runtime=self.attestor.runtime,
            identity=self.attestor.identity,
            model=self.manifest,
            memory_protection=self.memory_protection,
            serving_config=self.serving_config,
            nonce=nonce,
            plain_mode=self.plain_mode,
        )
        return doc.model_dump(mode="json")

    def __call__(self, nonce: bytes | None) -> dict[str, Any]:
        if nonce:
            return self.build(nonce)
        with self._lock:
            if self._boot is None:
                self._boot = self.build(b"")
            return self._boot


@dataclass
class BootOptions:
    """What ``teellm serve`` is asked to do."""

    bundle: Path
    trusted_publishers: list[Path]
    access: Any  # AccessPolicy
    tee: str = "auto"
    kbs_url: str | None = None
    content_key: SecretBytes | None = field(default=None, repr=False)
    plain_mode: bool = False
    settings: ModelSettings = field(default_factory=ModelSettings)
    kem: Kem = Kem.MLKEM768_X25519
    max_body_bytes: int = 1 << 20
    min_version: int | None = None
    attestation_per_minute: int = 120


@dataclass
class BootedServer:
    """A booted server: the app context and what to close on shutdown."""

    context: Any  # teellm.server.app.ServerContext
    attestor: Attestor
    model: OpenedModel

    def close(self) -> None:
        self.context.ready = False
        self.model.close()


def boot(opts: BootOptions, *, runtime: TEERuntime | None = None) -> BootedServer:
    """Run the boot sequence; raise :class:`BootError` (or a typed error) on failure."""
    from teellm.attestation.runtime import select
    from teellm.server.app import ServerContext, ServerLimits

    if runtime is None:
        runtime = select(opts.tee)
    if runtime.kind == TeeType.SIMULATED:
        log.warning(SIMULATED_WARNING)
    _harden()
    identity = ServerIdentity.generate(opts.kem)
    manifest = read_manifest(opts.bundle)
    config = serving_config(
        runtime=runtime,
        settings=opts.settings,
        plain_mode=opts.plain_mode,
        max_body_bytes=opts.max_body_bytes,
        kem=opts.kem,
    )
    attestor = Attestor(runtime, identity)
    publishers = load_publishers(opts.trusted_publishers)
    if opts.content_key is not None:
        content_key = opts.content_key
    elif opts.kbs_url:
        content_key = release_key(opts.kbs_url, manifest, runtime)
    else:
        raise BootError("no key source: give --kbs URL", code="usage")
    try:
        model = open_model(
            opts.bundle,
            content_key=content_key,
            trusted_publishers=publishers,
            settings=opts.settings,
            expected_digest=manifest.digest(),
            min_version=opts.min_version,
        )
    finally:
        if opts.content_key is None:
            content_key.zeroize()
    docs = DocumentSource(
        attestor,
        manifest=manifest,
        serving_config=config,
        memory_protection=protection_report(model.bundle),
        plain_mode=opts.plain_mode,
    )
    ctx = ServerContext(
        engine=model.engine,
        access=opts.access,
        identity=identity,
        model_digest=manifest.digest(),
        attestation=docs,
        plain_allowed=opts.plain_mode,
        owned_by=manifest.publisher_key_id[:16],
        limits=ServerLimits(
            max_body_bytes=opts.max_body_bytes,
            attestation_per_minute=opts.attestation_per_minute,
        ),
        simulated=attestor.simulated,
        make_request=_engine_request_factory(),
        make_sampling=_engine_sampling_factory(),
    )
    docs(None)  # boot evidence, made once before serving
    ctx.ready = True
    ctx.metrics.ready.set(1)
    log.info(
        "ready: model=%s version=%s tee=%s plain_mode=%s",
        manifest.model_id,
        manifest.version,
        runtime.kind,
        opts.plain_mode,
    )
    return BootedServer(context=ctx, attestor=attestor, model=model)


def _harden() -> None:
    try:
        from teellm.memory import harden_process
    except ImportError:  # pragma: no cover - memory component absent
        return
    harden_process()


def _engine_request_factory() -> Callable[..., Any]:
    from teellm.engine import GenerationRequest

    return GenerationRequest


def _engine_sampling_factory() -> Callable[..., Any]:
    from teellm.engine import SamplingParams

    return SamplingParams
