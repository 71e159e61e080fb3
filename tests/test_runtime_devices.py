"""configfs-tsm and NSM runtimes against fake kernel interfaces serving real evidence.

The fake configfs-tsm tree behaves like the kernel ABI: a report directory gets
its attributes on mkdir, ``inblob``/``outblob``/``auxblob`` are FIFOs so reading
``outblob`` blocks until the "kernel" has consumed ``inblob`` and produced the
report, and every ``inblob`` write bumps ``generation``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from teellm.attestation import AppraisalPolicy, AttestationError, TeeType, verify_and_appraise
from teellm.attestation.runtime import NitroRuntime, TsmRuntime, select
from teellm.attestation.snp.certs import build_cert_table

LAX = AppraisalPolicy(allow_any_measurement=True, require_report_data=False)


class FakeTsm:
    """A thread playing the kernel side of /sys/kernel/config/tsm/report."""

    def __init__(self, root: Path, provider: str, outblob: bytes, auxblob: bytes | None) -> None:
        self.root, self.provider, self.outblob, self.auxblob = root, provider, outblob, auxblob
        self.inblobs: list[bytes] = []
        self.generation_step = 1
        self._stop = threading.Event()
        self._seen: set[str] = set()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            for entry in os.scandir(self.root):
                if entry.is_dir() and entry.name not in self._seen:
                    self._seen.add(entry.name)
                    self._populate(Path(entry.path))

    def _populate(self, d: Path) -> None:
        (d / "provider").write_text(self.provider + "\n")
        (d / "generation").write_text("0\n")
        os.mkfifo(d / "outblob")
        if self.auxblob is not None:
            os.mkfifo(d / "auxblob")
        os.mkfifo(d / "inblob")  # last: the runtime waits for it
        threading.Thread(target=self._serve, args=(d,), daemon=True).start()

    def _serve(self, d: Path) -> None:
        try:
            with open(d / "inblob", "rb") as f:
                self.inblobs.append(f.read())
            (d / "generation").write_text(f"{self.generation_step}\n")
            with open(d / "outblob", "wb") as f:
                f.write(self.outblob)
            if self.auxblob is not None:
                with open(d / "auxblob", "wb") as f:
                    f.write(self.auxblob)
        except OSError:
            return  # the probe directory is removed without a request


@pytest.fixture
def tsm_root(tmp_path: Path) -> Path:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    return root


@pytest.fixture
def fake_tdx(tsm_root: Path, vectors: Path) -> Iterator[FakeTsm]:
    fake = FakeTsm(tsm_root, "tdx_guest", (vectors / "tdx/tdx_v4_quote.bin").read_bytes(), None)
    yield fake
    fake.stop()


def _snp_table(vectors: Path) -> bytes:
    ask, ark = x509.load_pem_x509_certificates((vectors / "snp/ask_ark_milan.pem").read_bytes())
    return build_cert_table(
        {
            "vcek": (vectors / "snp/milan_vcek2.der").read_bytes(),
            "ask": ask.public_bytes(serialization.Encoding.DER),
            "ark": ark.public_bytes(serialization.Encoding.DER),
        }
    )


def test_tsm_tdx_quote(fake_tdx: FakeTsm, tsm_root: Path, vectors: Path) -> None:
    runtime = TsmRuntime(tsm_root)
    evidence = runtime.evidence(b"\x42" * 64)
    assert fake_tdx.inblobs == [b"\x42" * 64]
    assert evidence.tee_type is TeeType.TDX and runtime.kind is TeeType.TDX
    assert evidence.raw == (vectors / "tdx/tdx_v4_quote.bin").read_bytes()
    d = verify_and_appraise(
        evidence,
        LAX,
        expected_report_data=None,
        now=datetime(2025, 7, 1, tzinfo=UTC),
        collateral=(vectors / "tdx/tdx_v4_collateral.json").read_bytes(),
    )
    assert d.accepted, d.reasons
    assert isinstance(select("auto", tsm_root=tsm_root), TsmRuntime)


def test_tsm_snp_report_with_auxblob(tsm_root: Path, vectors: Path) -> None:
    report = (vectors / "snp/milan_report2.bin").read_bytes()
    fake = FakeTsm(tsm_root, "sev_guest", report, _snp_table(vectors))
    try:
        evidence = TsmRuntime(tsm_root).evidence(bytes(64))
    finally:
        fake.stop()
    assert evidence.tee_type is TeeType.SNP and evidence.raw == report
    assert "certs" in evidence.aux and "vcek" not in evidence.aux
    d = verify_and_appraise(
        evidence, LAX, expected_report_data=None, now=datetime(2025, 1, 1, tzinfo=UTC)
    )
    assert d.accepted, d.reasons


def test_tsm_concurrent_writer_detected(fake_tdx: FakeTsm, tsm_root: Path) -> None:
    fake_tdx.generation_step = 2  # someone else wrote inblob in between
    with pytest.raises(AttestationError) as exc:
        TsmRuntime(tsm_root).evidence(bytes(64))
    assert exc.value.code == "tsm_race"


def test_tsm_bad_provider_and_missing_tree(tsm_root: Path, tmp_path: Path) -> None:
    fake = FakeTsm(tsm_root, "mystery_guest", b"x", None)
    try:
        with pytest.raises(AttestationError) as exc:
            TsmRuntime(tsm_root).evidence(bytes(64))
        assert exc.value.code == "tsm_failed"
    finally:
        fake.stop()
    with pytest.raises(AttestationError) as exc:
        TsmRuntime(tmp_path / "absent").evidence(bytes(64))
    assert exc.value.code == "tsm_unavailable"
    with pytest.raises(AttestationError):
        TsmRuntime(tsm_root).evidence(b"short")


class FakeNsm:
    """A unix-socket NSM: length-prefixed CBOR requests and answers."""

    def __init__(self, path: Path, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[object] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                size = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))[0]
                self.requests.append(cbor2.loads(conn.recv(size, socket.MSG_WAITALL)))
                conn.sendall(struct.pack(">I", len(self.answer)) + self.answer)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self._thread.join(5)


def test_nitro_runtime_over_socket(tmp_path: Path, vectors: Path) -> None:
    document = base64.b64decode((vectors / "nitro/nitro_attestation.b64").read_bytes())
    nsm = FakeNsm(tmp_path / "nsm", cbor2.dumps({"Attestation": {"document": document}}))
    try:
        runtime = NitroRuntime(tmp_path / "nsm")
        evidence = runtime.evidence(b"\x07" * 64, nonce=b"n" * 16, public_key=b"k" * 32)
    finally:
        nsm.close()
    assert nsm.requests == [
        {"Attestation": {"user_data": b"\x07" * 64, "nonce": b"n" * 16, "public_key": b"k" * 32}}
    ]
    assert evidence.tee_type is TeeType.NITRO and evidence.raw == document
    at = datetime(2024, 9, 7, 14, 37, 39, tzinfo=UTC)
    assert verify_and_appraise(evidence, LAX, expected_report_data=None, now=at).accepted


@pytest.mark.parametrize(
    "answer",
    [cbor2.dumps({"Error": "InvalidArgument"}), b"\xff\x00", cbor2.dumps({"Attestation": {}})],
)
def test_nitro_runtime_errors(tmp_path: Path, answer: bytes) -> None:
    nsm = FakeNsm(tmp_path / "nsm", answer)
    try:
        with pytest.raises(AttestationError) as exc:
            NitroRuntime(tmp_path / "nsm").evidence(bytes(64))
    finally:
        nsm.close()
    assert exc.value.code == "nsm_failed"


def test_nitro_runtime_missing_device(tmp_path: Path) -> None:
    with pytest.raises(AttestationError) as exc:
        NitroRuntime(tmp_path / "nsm").evidence(bytes(64))
    assert exc.value.code == "nsm_unavailable"
