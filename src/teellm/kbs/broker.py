"""The key broker: challenges, appraisal, release or denial, audit.

Transport-free: the HTTP app (teellm.kbs.app) and tests call it directly.
Every challenge, release, denial and admin change leaves an audit record; a key
is sealed and its release audited before it is handed out, so a release that
could not be audited does not happen.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import NoReturn, TypedDict

from teellm.attestation.types import AttestationError, Evidence
from teellm.attestation.verify import verify_and_appraise
from teellm.crypto.secret import SecretBytes
from teellm.kbs.audit import AuditEvent, AuditReport
from teellm.kbs.errors import KbsError, KeyReleaseDenied, MasterKeyError, ProtocolError
from teellm.kbs.masterkey import MasterKeyRing
from teellm.kbs.metrics import BrokerMetrics
from teellm.kbs.policy import ReleasePolicy
from teellm.kbs.protocol import (
    DEFAULT_SUITE,
    NONCE_SIZE,
    AttestRequest,
    AttestResponse,
    ChallengeRequest,
    ChallengeResponse,
    decode_hex,
    expected_report_data,
    get_suite,
    hpke_info,
    load_public_key,
    seal,
)
from teellm.kbs.ratelimit import FailureRateLimiter
from teellm.kbs.store import ChallengeRow, KeyInfo, KeyRow, PolicyRow, Store

log = logging.getLogger("teellm.kbs")


class _Ctx(TypedDict):
    model_id: str
    version: int
    tee_type: str
    request_id: str


CONTENT_KEY_SIZE = 32
_PURGE_EVERY = 256  # challenges between sweeps of long-expired nonces
_PURGE_GRACE_S = 3600.0  # keep expired nonces an hour so late attempts are audited as expired


class KeyBroker:
    """Releases model content keys to attested TEEs under per-model release policies.

    ``verify_clock`` gives the ``now`` used for evidence verification (None: wall
    clock); ``clock`` is the epoch-seconds clock for nonce expiry. ``collateral``
    maps a TEE type (``"tdx"``) to verification collateral supplied offline.

    Evidence must bind the nonce and the ephemeral key (report data). Only when
    the broker is built with ``allow_unbound_evidence`` AND a model's policy sets
    ``require_report_data: false`` is that check skipped: then anyone holding a
    recorded piece of evidence gets the key, so this exists for demonstrations
    on recorded hardware evidence, never for production.
    """

    def __init__(
        self,
        store: Store,
        master_keys: MasterKeyRing,
        *,
        nonce_ttl_s: float = 60.0,
        suite: str = DEFAULT_SUITE,
        rate_limiter: FailureRateLimiter | None = None,
        metrics: BrokerMetrics | None = None,
        verify_clock: Callable[[], datetime | None] | None = None,
        clock: Callable[[], float] = time.time,
        collateral: Mapping[str, bytes] | None = None,
        allow_unbound_evidence: bool = False,
    ) -> None:
        self.store = store
        self.master_keys = master_keys
        self.nonce_ttl_s = nonce_ttl_s
        self.suite = get_suite(suite)
        self.rate_limiter = rate_limiter or FailureRateLimiter()
        self.metrics = metrics or BrokerMetrics()
        self._verify_clock = verify_clock or (lambda: None)
        self._clock = clock
        self._collateral = dict(collateral or {})
        self.allow_unbound_evidence = allow_unbound_evidence
        self._policy_cache: dict[str, ReleasePolicy] = {}
        self._challenges = 0
        self._count_lock = threading.Lock()

    # -- administration ------------------------------------------------------------------

    def put_key(
        self,
        model_id: str,
        version: int,
        key: SecretBytes,
        *,
        manifest_digest: bytes | None = None,
        replace: bool = False,
        actor: str = "admin",
    ) -> None:
        """Store a content key wrapped under the current master key (never logged)."""
        if len(key) != CONTENT_KEY_SIZE:
            raise KbsError("content keys are 32 bytes", code="key_invalid")
        if manifest_digest is not None and len(manifest_digest) != 32:
            raise KbsError("manifest digest must be 32 bytes", code="manifest_digest_invalid")
        key_id, wrapped = self.master_keys.wrap(key, model_id=model_id, version=version)
        digest_hex = manifest_digest.hex() if manifest_digest is not None else None
        if not self.store.put_key(
            model_id, version, key_id, wrapped, manifest_digest=digest_hex, replace=replace
        ):
            raise KbsError(
                f"a key for {model_id} version {version} exists (use replace)", code="key_exists"
            )
        self._audit_admin(
            "put_key",
            actor,
            model_id=model_id,
            version=version,
            detail={"master_key_id": key_id, "manifest_digest": digest_hex, "replace": replace},
        )

    def set_policy(
        self,
        model_id: str,
        policy: ReleasePolicy,
        *,
        version: int | None = None,
        actor: str = "admin",
    ) -> None:
        """Set the release policy of a model (or of one version of it)."""
        self.store.set_policy(model_id, version, policy.to_json(), policy.min_version)
        self._audit_admin(
            "set_policy",
            actor,
            model_id=model_id,
            version=version,
            detail={"policy": policy.model_dump(mode="json")},
        )

    def effective_policy(self, model_id: str, version: int) -> ReleasePolicy | None:
        """The version's own policy if set, else the model's; anti-rollback takes the
        higher ``min_version`` of the two."""
        _, specific, general, _ = self.store.release_state(model_id, version)
        return self._combine(specific, general)

    def _combine(
        self, specific: PolicyRow | None, general: PolicyRow | None
    ) -> ReleasePolicy | None:
        row = specific or general
        if row is None:
            return None
        policy = self._parse_policy(row.policy)
        floor = max(r.min_version for r in (specific, general) if r is not None)
        if floor == policy.min_version:
            return policy
        return policy.model_copy(update={"min_version": floor})

    def _parse_policy(self, text: str) -> ReleasePolicy:
        # Policies are re-read on every request (another broker may have changed them);
        # parsing is cached by their exact JSON text.
        cached = self._policy_cache.get(text)
        if cached is None:
            cached = ReleasePolicy.model_validate_json(text)
            if len(self._policy_cache) > 256:
                self._policy_cache.clear()
            self._policy_cache[text] = cached
        return cached

    def list_keys(self) -> list[KeyInfo]:
        """Key metadata only; no call of the broker returns key material to an admin."""
        return self.store.list_keys()

    def verify_audit(self) -> AuditReport:
        return self.store.verify_audit()

    def rotate_master_key(self, new_ring: MasterKeyRing, *, actor: str = "admin") -> int:
        """Re-wrap every stored key under ``new_ring``'s current key; returns rows re-wrapped.

        ``self.master_keys`` must still open the old rows (it may be the new ring
        holding the old key as a secondary).
        """
        updates = []
        for row in self.store.all_wrapped():
            if row.master_key_id == new_ring.current_id:
                continue
            key = self.master_keys.unwrap(
                row.master_key_id, row.wrapped, model_id=row.model_id, version=row.version
            )
            with key:
                new_id, new_wrapped = new_ring.wrap(key, model_id=row.model_id, version=row.version)
            updates.append(
                (row.model_id, row.version, row.master_key_id, row.wrapped, new_id, new_wrapped)
            )
        n = self.store.replace_wrapped(updates)
        self.master_keys = new_ring
        self._audit_admin(
            "rotate_master_key", actor, detail={"rows": n, "master_key_id": new_ring.current_id}
        )
        return n

    def _audit_admin(
        self,
        action: str,
        actor: str,
        *,
        model_id: str | None = None,
        version: int | None = None,
        detail: dict[str, object] | None = None,
    ) -> None:
        self.store.append_audit(
            AuditEvent(
                event="admin",
                decision=action,
                model_id=model_id,
                version=version,
                client=actor,
                detail=dict(detail or {}),
            )
        )

    # -- protocol ------------------------------------------------------------------------

    def challenge(self, req: ChallengeRequest, client: str) -> ChallengeResponse:
        """Step 1->2: check the request can be served at all, issue a single-use nonce."""
        self.rate_limiter.check(client)
        codes, reasons, _, _ = self._precheck(req.model_id, req.version, req.tee_type)
        if codes:
            self._deny(
                client,
                codes,
                reasons,
                model_id=req.model_id,
                version=req.version,
                tee_type=req.tee_type,
                stage="challenge",
            )
        request_id = secrets.token_hex(16)
        nonce = secrets.token_bytes(NONCE_SIZE)
        expires = self._clock() + self.nonce_ttl_s
        self.store.add_challenge(
            ChallengeRow(
                request_id, nonce, req.model_id, req.version, req.tee_type, client, expires, False
            ),
            AuditEvent(
                event="challenge",
                decision="issued",
                model_id=req.model_id,
                version=req.version,
                tee_type=req.tee_type,
                request_id=request_id,
                client=client,
            ),
        )
        self.metrics.challenges.inc()
        self._maybe_purge()
        return ChallengeResponse(
            request_id=request_id,
            nonce=nonce.hex(),
            expires_at=datetime.fromtimestamp(expires, UTC).isoformat(),
            suite=self.suite.name,
        )

    def attest(self, req: AttestRequest, client: str) -> AttestResponse:
        """Step 3->4: consume the nonce, verify and appraise, seal the key or deny."""
        self.rate_limiter.check(client)
        ch = self.store.get_challenge(req.request_id)
        if ch is None:
            self._deny(
                client,
                ["unknown_request"],
                ["no challenge was issued with this request id"],
                request_id=req.request_id[:64],
                stage="attest",
            )
        ctx = _Ctx(
            model_id=ch.model_id,
            version=ch.version,
            tee_type=ch.tee_type,
            request_id=ch.request_id,
        )
        # Consume first: whatever the outcome, this nonce never serves again.
        if not self.store.consume_challenge(ch.request_id):
            self._deny(
                client,
                ["nonce_reused"],
                ["this challenge's nonce was already used"],
                stage="attest",
                **ctx,
            )
        if self._clock() > ch.expires_at:
            self._deny(
                client,
                ["nonce_expired"],
                ["the challenge's nonce has expired"],
                stage="attest",
                **ctx,
            )
        try:
            pub_bytes = decode_hex(req.hpke_public_key, "hpke_public_key", max_bytes=4096)
            pub = load_public_key(self.suite, pub_bytes)
            evidence = Evidence.from_json(req.evidence)
        except (ProtocolError, AttestationError) as exc:
            self._deny(client, [exc.code], [str(exc)], stage="attest", **ctx)
        if evidence.tee_type.value != ch.tee_type:
            self._deny(
                client,
                ["tee_type_mismatch"],
                [f"challenge was for {ch.tee_type}, evidence is {evidence.tee_type.value}"],
                stage="attest",
                **ctx,
            )
        # Policy or key may have changed since the challenge: check again.
        codes, reasons, policy, key_row = self._precheck(ch.model_id, ch.version, ch.tee_type)
        if codes:
            self._deny(client, codes, reasons, stage="attest", **ctx)
        assert policy is not None and key_row is not None  # _precheck guarantees both
        digest = bytes.fromhex(key_row.manifest_digest) if key_row.manifest_digest else b""
        expected: bytes | None = expected_report_data(ch.nonce, pub_bytes, digest)
        appraisal = policy.appraisal
        if not appraisal.require_report_data:
            if self.allow_unbound_evidence:
                log.warning(
                    "releasing without report-data binding for %s (policy opt-out)", ch.model_id
                )
                expected = None
            else:  # the broker ignores the opt-out: binding is always checked
                appraisal = appraisal.model_copy(update={"require_report_data": True})
        started = time.perf_counter()
        decision = verify_and_appraise(
            evidence,
            appraisal,
            expected_report_data=expected,
            now=self._verify_clock(),
            collateral=self._collateral.get(evidence.tee_type.value),
        )
        self.metrics.verification_seconds.observe(time.perf_counter() - started)
        measurements = dict(decision.claims.measurements) if decision.claims else {}
        if not decision.accepted:
            self._deny(
                client,
                [c.name for c in decision.failures],
                decision.reasons,
                stage="attest",
                measurements=measurements,
                **ctx,
            )
        try:
            key = self.master_keys.unwrap(
                key_row.master_key_id, key_row.wrapped, model_id=ch.model_id, version=ch.version
            )
        except MasterKeyError as exc:
            log.error(
                "stored key for %s v%d cannot be opened: %s", ch.model_id, ch.version, exc.code
            )
            self._deny(
                client,
                [exc.code],
                ["the broker cannot open its stored key"],
                stage="attest",
                measurements=measurements,
                count_failure=False,
                **ctx,
            )
        with key:
            sealed = seal(
                self.suite,
                pub,
                bytes(key.reveal()),
                hpke_info(ch.model_id, ch.version, ch.request_id, self.suite.name),
            )
        self.store.append_audit(
            AuditEvent(
                event="release",
                decision="released",
                client=client,
                measurements=measurements,
                reasons=[],
                **ctx,
                detail={
                    "bound": expected is not None,
                    "suite": self.suite.name,
                    "tcb_status": decision.claims.tcb_status if decision.claims else None,
                },
            )
        )
        self.metrics.releases.labels(model_id=ch.model_id).inc()
        return AttestResponse(
            sealed_key=sealed.hex(),
            suite=self.suite.name,
            model_id=ch.model_id,
            version=ch.version,
        )

    # -- internals -----------------------------------------------------------------------

    def _precheck(
        self, model_id: str, version: int, tee_type: str
    ) -> tuple[list[str], list[str], ReleasePolicy | None, KeyRow | None]:
        """Can this model version be released to this TEE type at all? One store read."""
        known, specific, general, key_row = self.store.release_state(model_id, version)
        if not known:
            return ["unknown_model"], ["no key or policy is registered for this model"], None, None
        policy = self._combine(specific, general)
        if policy is None:
            return ["no_policy"], ["no release policy is set for this model"], None, None
        if version < policy.min_version:
            reason = f"version {version} is below the minimum version {policy.min_version}"
            return ["version_below_minimum"], [reason], None, None
        if key_row is None:
            return ["unknown_version"], [f"no key is registered for version {version}"], None, None
        if not policy.allows_tee_type(tee_type):
            return (
                ["tee_type_not_allowed"],
                [f"TEE type {tee_type[:32]!r} is not allowed"],
                None,
                None,
            )
        return [], [], policy, key_row

    def _deny(
        self,
        client: str,
        codes: list[str],
        reasons: list[str],
        *,
        stage: str,
        model_id: str | None = None,
        version: int | None = None,
        tee_type: str | None = None,
        request_id: str | None = None,
        measurements: dict[str, str] | None = None,
        count_failure: bool = True,
    ) -> NoReturn:
        self.store.append_audit(
            AuditEvent(
                event="denial",
                decision="denied",
                model_id=model_id,
                version=version,
                tee_type=tee_type,
                request_id=request_id,
                client=client,
                measurements=measurements or {},
                reasons=reasons,
                codes=codes,
                detail={"stage": stage},
            )
        )
        for code in codes:
            self.metrics.denials.labels(reason=code).inc()
        if count_failure:
            self.rate_limiter.failed(client)
        raise KeyReleaseDenied("key release denied", reasons=reasons, codes=codes)

    def _maybe_purge(self) -> None:
        with self._count_lock:
            self._challenges += 1
            due = self._challenges % _PURGE_EVERY == 0
        if due:
            self.store.purge_challenges(self._clock() - _PURGE_GRACE_S)
