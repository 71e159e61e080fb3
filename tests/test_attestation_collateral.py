"""Collateral fetch from a PCCS-compatible server on 127.0.0.1, with the cache."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse

import pytest

from teellm.attestation import AppraisalPolicy, Evidence, TeeType, verify_and_appraise
from teellm.attestation.collateral import CollateralSource

AT = datetime(2025, 7, 1, tzinfo=UTC)
LAX = AppraisalPolicy(allow_any_measurement=True, require_report_data=False)


class Pccs:
    """Serves the v4 PCCS API from a collateral file (the vector's real collateral)."""

    def __init__(self, collateral: dict[str, str]) -> None:
        self.c = collateral
        self.paths: list[str] = []
        pccs = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                pccs.paths.append(url.path)
                query = parse_qs(url.query)
                headers: dict[str, str] = {}
                c = pccs.c
                if url.path == "/sgx/certification/v4/pckcrl" and query.get("ca") == ["platform"]:
                    body = bytes.fromhex(c["pck_crl"])
                    headers["SGX-PCK-CRL-Issuer-Chain"] = quote(c["pck_crl_issuer_chain"])
                elif url.path == "/tdx/certification/v4/tcb" and query.get("fmspc"):
                    body = (
                        '{"tcbInfo":'
                        + c["tcb_info"]
                        + ',"signature":"'
                        + c["tcb_info_signature"]
                        + '"}'
                    ).encode()
                    headers["TCB-Info-Issuer-Chain"] = quote(c["tcb_info_issuer_chain"])
                elif url.path == "/tdx/certification/v4/qe/identity":
                    body = (
                        '{"enclaveIdentity":'
                        + c["qe_identity"]
                        + ',"signature":"'
                        + c["qe_identity_signature"]
                        + '"}'
                    ).encode()
                    headers["SGX-Enclave-Identity-Issuer-Chain"] = quote(
                        c["qe_identity_issuer_chain"]
                    )
                elif url.path == "/sgx/certification/v4/rootcacrl":
                    body = c["root_ca_crl"].encode()  # PCCS serves it as hex text
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pccs(vectors: Path) -> Iterator[Pccs]:
    server = Pccs(json.loads((vectors / "tdx/tdx_v4_collateral.json").read_text()))
    yield server
    server.close()


def test_fetch_verify_and_cache(pccs: Pccs, vectors: Path, tmp_path: Path) -> None:
    quote_bytes = (vectors / "tdx/tdx_v4_quote.bin").read_bytes()
    evidence = Evidence(TeeType.TDX, quote_bytes)
    source = CollateralSource(pccs.url, tmp_path / "cache")
    d = verify_and_appraise(
        evidence, LAX, expected_report_data=None, now=AT, collateral_source=source
    )
    assert d.accepted, d.reasons
    assert source.fetches == 1 and len(pccs.paths) == 4
    # memory cache
    again = verify_and_appraise(
        evidence, LAX, expected_report_data=None, now=AT, collateral_source=source
    )
    assert again.accepted and source.fetches == 1
    # disk cache, new process-like instance
    fresh = CollateralSource(pccs.url, tmp_path / "cache")
    assert fresh.get(quote_bytes, now=AT) == source.get(quote_bytes, now=AT)
    assert fresh.fetches == 0 and len(pccs.paths) == 4
    # past nextUpdate the cache is stale and fetched again
    later = datetime(2025, 8, 1, tzinfo=UTC)
    fresh.get(quote_bytes, now=later)
    assert fresh.fetches == 1 and len(pccs.paths) == 8


def test_env_configured_source(
    pccs: Pccs, vectors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEELLM_PCCS_URL", pccs.url)
    monkeypatch.setenv("TEELLM_COLLATERAL_CACHE", str(tmp_path / "c"))
    evidence = Evidence(TeeType.TDX, (vectors / "tdx/tdx_v4_quote.bin").read_bytes())
    assert verify_and_appraise(evidence, LAX, expected_report_data=None, now=AT).accepted
    assert list((tmp_path / "c").glob("tdx-b0c06f000000-platform.json"))


def test_unreachable_or_broken_server(vectors: Path, tmp_path: Path) -> None:
    evidence = Evidence(TeeType.TDX, (vectors / "tdx/tdx_v4_quote.bin").read_bytes())
    dead = CollateralSource("http://127.0.0.1:9", timeout=2)
    d = verify_and_appraise(
        evidence, LAX, expected_report_data=None, now=AT, collateral_source=dead
    )
    assert not d.accepted and "collateral_unavailable" in d.failures[0].reason
    broken = Pccs({})  # every endpoint answers 404 or fails
    try:
        source = CollateralSource(broken.url)
        d = verify_and_appraise(
            evidence, LAX, expected_report_data=None, now=AT, collateral_source=source
        )
        assert not d.accepted and "collateral_unavailable" in d.failures[0].reason
    finally:
        broken.close()
