"""DCAP collateral from a PCCS or Intel PCS (API v4), cached on disk.

The result is dcap-qvl's collateral JSON (the same format as offline files).
A cached entry is reused while its TCB info and QE identity are still current
(``nextUpdate`` after ``now``); otherwise it is fetched again.
"""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import dcap_qvl
import httpx

from teellm.attestation.types import AttestationError

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
INTEL_ROOT_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
_FMSPC = re.compile(r"^[0-9A-Fa-f]{12}$")


def _unavailable(what: str) -> AttestationError:
    return AttestationError(f"collateral fetch failed: {what}", code="collateral_unavailable")


def _der(body: bytes) -> str:
    """CRL bodies come as DER, PEM or hex text depending on the server; return hex DER."""
    text = body.strip()
    if text.startswith(b"-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            return x509.load_pem_x509_crl(text).public_bytes(Encoding.DER).hex()
        except ValueError:
            raise _unavailable("CRL is not PEM") from None
    if re.fullmatch(rb"[0-9a-fA-F]+", text or b"-"):
        return text.decode().lower()
    return body.hex()


def _signed_part(body: str, key: str) -> tuple[str, str]:
    """The exact JSON text of ``key`` (it is what the signature covers) and the signature."""
    match = re.search('"' + re.escape(key) + r'"\s*:\s*', body)
    if match is None:
        raise _unavailable(f"response has no {key}")
    try:
        _value, end = json.JSONDecoder().raw_decode(body, match.end())
        signature = json.loads(body)["signature"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise _unavailable(f"{key} response malformed") from None
    if not isinstance(signature, str):
        raise _unavailable("signature is not a string")
    return body[match.end() : end], signature


def _next_update(collateral: dict[str, str]) -> datetime:
    times = []
    for key in ("tcb_info", "qe_identity"):
        value = json.loads(collateral[key])["nextUpdate"]
        times.append(datetime.fromisoformat(value.replace("Z", "+00:00")))
    return min(times)


class CollateralSource:
    """Fetches collateral for a quote from ``base_url`` and caches it in ``cache_dir``."""

    def __init__(
        self,
        base_url: str = INTEL_PCS_URL,
        cache_dir: Path | None = None,
        *,
        timeout: float = 10.0,
        root_crl_url: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.timeout = timeout
        if root_crl_url is None and self.base_url == INTEL_PCS_URL:
            root_crl_url = INTEL_ROOT_CRL_URL
        self.root_crl_url = root_crl_url or f"{self.base_url}/sgx/certification/v4/rootcacrl"
        self._memory: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    @classmethod
    def from_env(cls) -> CollateralSource | None:
        """From ``TEELLM_PCCS_URL`` (and ``TEELLM_COLLATERAL_CACHE``), or None if unset."""
        url = os.environ.get("TEELLM_PCCS_URL")
        if not url:
            return None
        cache = os.environ.get("TEELLM_COLLATERAL_CACHE")
        return cls(url, Path(cache) if cache else None)

    def get(self, quote: bytes, *, now: datetime | None = None) -> bytes:
        """Collateral JSON (dcap-qvl format) for ``quote``, current at ``now``."""
        at = now or datetime.now(UTC)
        try:
            parsed = dcap_qvl.parse_quote(quote)
            fmspc, ca, tdx = str(parsed.fmspc()), str(parsed.ca()), bool(parsed.is_tdx())
        except ValueError:
            raise AttestationError("quote cannot be parsed", code="evidence_malformed") from None
        if not _FMSPC.match(fmspc) or ca not in ("processor", "platform"):
            raise AttestationError("quote has no usable FMSPC/CA", code="evidence_malformed")
        key = f"{'tdx' if tdx else 'sgx'}-{fmspc.lower()}-{ca}"
        with self._lock:
            cached = self._cached(key, at)
            if cached is not None:
                return cached
            blob = self._fetch(fmspc, ca, tdx)
            self._store(key, blob)
            return blob

    def _fresh(self, blob: bytes, at: datetime) -> bool:
        try:
            return _next_update(json.loads(blob)) > at
        except (ValueError, KeyError, TypeError, RecursionError):
            return False

    def _cached(self, key: str, at: datetime) -> bytes | None:
        blob = self._memory.get(key)
        if blob is None and self.cache_dir is not None:
            try:
                blob = (self.cache_dir / f"{key}.json").read_bytes()
            except OSError:
                blob = None
        if blob is not None and self._fresh(blob, at):
            self._memory[key] = blob
            return blob
        return None

    def _store(self, key: str, blob: bytes) -> None:
        self._memory[key] = blob
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".{key}.{os.getpid()}.tmp"
        tmp.write_bytes(blob)
        os.replace(tmp, self.cache_dir / f"{key}.json")  # atomic for concurrent readers

    def _fetch(self, fmspc: str, ca: str, tdx: bool) -> bytes:
        kind = "tdx" if tdx else "sgx"
        base = self.base_url
        self.fetches += 1
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
                pck = self._call(client, f"{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der")
                tcb = self._call(client, f"{base}/{kind}/certification/v4/tcb?fmspc={fmspc}")
                qe = self._call(client, f"{base}/{kind}/certification/v4/qe/identity")
                root = self._call(client, self.root_crl_url)
        except httpx.HTTPError as exc:
            raise _unavailable(type(exc).__name__) from None
        tcb_info, tcb_sig = _signed_part(tcb.text, "tcbInfo")
        qe_identity, qe_sig = _signed_part(qe.text, "enclaveIdentity")
        collateral = {
            "pck_crl_issuer_chain": self._header(pck, "SGX-PCK-CRL-Issuer-Chain"),
            "root_ca_crl": _der(root.content),
            "pck_crl": _der(pck.content),
            "tcb_info_issuer_chain": self._header(
                tcb, "TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"
            ),
            "tcb_info": tcb_info,
            "tcb_info_signature": tcb_sig,
            "qe_identity_issuer_chain": self._header(qe, "SGX-Enclave-Identity-Issuer-Chain"),
            "qe_identity": qe_identity,
            "qe_identity_signature": qe_sig,
        }
        blob = json.dumps(collateral).encode()
        try:
            dcap_qvl.QuoteCollateralV3.from_json(blob.decode())
        except ValueError:
            raise _unavailable("assembled collateral rejected by dcap-qvl") from None
        return blob

    @staticmethod
    def _call(client: httpx.Client, url: str) -> httpx.Response:
        response = client.get(url)
        if response.status_code != 200:
            raise _unavailable(f"HTTP {response.status_code} from {url.split('?')[0]}")
        if len(response.content) > 4 << 20:
            raise _unavailable("response too large")
        return response

    @staticmethod
    def _header(response: httpx.Response, *names: str) -> str:
        for name in names:
            if name in response.headers:
                return unquote(response.headers[name])
        raise _unavailable(f"missing header {names[0]}")
