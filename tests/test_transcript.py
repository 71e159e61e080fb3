from hypothesis import given
from hypothesis import strategies as st

from teellm.attestation.transcript import matches, report_data


def test_report_data_is_64_bytes_and_deterministic() -> None:
    a = report_data("kbs", nonce=b"n", public_keys={"hpke": b"k"}, manifest_digest=b"m")
    assert len(a) == 64
    assert a == report_data("kbs", nonce=b"n", public_keys={"hpke": b"k"}, manifest_digest=b"m")
    assert matches(a, a)
    assert not matches(a[:-1] + bytes([a[-1] ^ 1]), a)
    assert not matches(a[:32], a)


def test_every_field_changes_the_binding() -> None:
    base = {"nonce": b"n", "public_keys": {"hpke": b"k"}, "manifest_digest": b"m", "config": b"c"}
    ref = report_data("p", **base)  # type: ignore[arg-type]
    assert report_data("q", **base) != ref  # type: ignore[arg-type]
    for field, other in [
        ("nonce", b"N"),
        ("public_keys", {"hpke": b"K"}),
        ("public_keys", {"sign": b"k"}),
        ("manifest_digest", b"M"),
        ("config", b"C"),
    ]:
        assert report_data("p", **{**base, field: other}) != ref  # type: ignore[arg-type]


@given(st.binary(max_size=8), st.binary(max_size=8), st.binary(max_size=8))
def test_length_prefixing_prevents_field_shifting(a: bytes, b: bytes, c: bytes) -> None:
    # Moving bytes from one field to the next must change the result.
    if b:
        x = report_data("p", nonce=a + b[:1], manifest_digest=b[1:] + c)
        y = report_data("p", nonce=a, manifest_digest=b + c)
        assert x != y
