"""The end-to-end envelope: round trips, padding, and every tamper detected with a typed error."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teellm.crypto import envelope as env
from teellm.crypto.hpke import HpkeError, HpkePrivateKey, HpkePublicKey, Kem
from teellm.crypto.secret import SecretBytes

SIGNING_PUB = bytes(32)
_FUZZ_KEY = HpkePrivateKey.generate(Kem.X25519)
_FUZZ_KID = env.key_id(_FUZZ_KEY.public_key.raw, SIGNING_PUB)


@pytest.fixture(scope="module", params=[Kem.MLKEM768_X25519, Kem.X25519])
def server(request: pytest.FixtureRequest) -> tuple[HpkePrivateKey, bytes]:
    sk = HpkePrivateKey.generate(request.param)
    return sk, env.key_id(sk.public_key.raw, SIGNING_PUB)


@pytest.fixture(scope="module")
def hybrid() -> tuple[HpkePrivateKey, bytes]:
    sk = HpkePrivateKey.generate()
    return sk, env.key_id(sk.public_key.raw, SIGNING_PUB)


BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "secret canary"}]})


def _seal(server: tuple[HpkePrivateKey, bytes], body: bytes = BODY.encode()) -> env.SealedRequest:
    sk, kid = server
    return env.seal_request(
        body, path="/v1/chat/completions", public_key=sk.public_key, server_key_id=kid
    )


def _frames(wire: bytes) -> tuple[bytes, list[bytes]]:
    """Split a response into its header and frames (test helper, no decryption)."""
    header, rest = wire[: env.RESPONSE_HEADER_SIZE], wire[env.RESPONSE_HEADER_SIZE :]
    frames = []
    while rest:
        (n,) = struct.unpack_from(">I", rest)
        frames.append(rest[: 4 + n])
        rest = rest[4 + n :]
    return header, frames


def _stream(opened: env.OpenedRequest, chunks: list[bytes], receipt: bytes = b"r") -> bytes:
    sealer = opened.sealer(env.ResponseContent.EVENT_STREAM)
    return sealer.header + b"".join(sealer.seal(c) for c in chunks) + sealer.finish(receipt)


def test_hpke_key_round_trip() -> None:
    for kem in Kem:
        sk = HpkePrivateKey.generate(kem)
        pk = HpkePublicKey.from_bytes(sk.public_key.raw)
        assert pk.kem is kem and pk == sk.public_key
        assert len(pk.raw) == kem.public_size
        ct = pk.seal(b"x", info=b"i")
        assert len(ct) == kem.enc_size + 1 + 16
        assert sk.open(ct, info=b"i") == b"x"
        with pytest.raises(HpkeError):
            sk.open(ct, info=b"j")
    assert "HpkePrivateKey" in repr(sk)
    with pytest.raises(HpkeError):
        HpkePublicKey.from_bytes(b"\x00" * 33)


def test_request_round_trip(server: tuple[HpkePrivateKey, bytes]) -> None:
    sealed = _seal(server)
    opened = env.open_request(sealed.wire, server[0], server_key_id=server[1])
    assert opened.path == "/v1/chat/completions"
    assert opened.json()["messages"][0]["content"] == "secret canary"
    assert opened.binding == sealed.binding == env.sha256(sealed.wire)
    assert opened.body_hash == env.sha256(BODY.encode())
    assert opened.response_key == sealed.response_key
    assert b"secret canary" not in sealed.wire
    assert "canary" not in repr(opened) and "canary" not in repr(sealed)


def test_request_sizes_are_padded_to_buckets(hybrid: tuple[HpkePrivateKey, bytes]) -> None:
    sizes = {len(_seal(hybrid, b"x" * n).wire) for n in (0, 1, 100, 500, 900)}
    assert len(sizes) == 1  # all in the 1 KiB bucket
    big = {len(_seal(hybrid, b"x" * n).wire) for n in (1100, 1500, 1900)}
    assert len(big) == 1 and big != sizes


def test_response_round_trip_and_stream(hybrid: tuple[HpkePrivateKey, bytes]) -> None:
    sealed = _seal(hybrid)
    opened = env.open_request(sealed.wire, hybrid[0], server_key_id=hybrid[1])
    chunks = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]
    wire = _stream(opened, chunks, b"receipt")
    opener = sealed.opener()
    got: list[bytes] = []
    for i in range(0, len(wire), 7):  # arbitrary network chunking
        got += opener.feed(wire[i : i + 7])
    opener.close()
    assert got == chunks
    assert opener.receipt == b"receipt"
    assert opener.content is env.ResponseContent.EVENT_STREAM
    assert opener.response_hash == env.sha256(b"".join(chunks))

    sealer = opened.sealer(env.ResponseContent.JSON)
    whole = sealed.open_response(sealer.seal_all(b'{"ok":1}', b""))
    assert whole.data == b'{"ok":1}' and whole.receipt == b""
    assert whole.content.media_type == "application/json"


def test_stream_chunks_hide_token_lengths(hybrid: tuple[HpkePrivateKey, bytes]) -> None:
    sealed = _seal(hybrid)
    opened = env.open_request(sealed.wire, hybrid[0], server_key_id=hybrid[1])
    sealer = opened.sealer(env.ResponseContent.EVENT_STREAM)
    sizes = {len(sealer.seal(b"data: " + b"t" * n + b"\n\n")) for n in range(1, 200)}
    assert len(sizes) == 1


def test_wrong_server_key_is_a_typed_error(hybrid: tuple[HpkePrivateKey, bytes]) -> None:
    sealed = _seal(hybrid)
    other = HpkePrivateKey.generate()
    with pytest.raises(env.KeyMismatchError):
        env.open_request(sealed.wire, other, server_key_id=env.key_id(other.public_key.raw, b""))
    # Same key id claimed but a different private key: the HPKE open fails.
    with pytest.raises(env.RequestDecryptError):
        env.open_request(sealed.wire, other, server_key_id=hybrid[1])


def test_request_bit_flips_are_detected(hybrid: tuple[HpkePrivateKey, bytes]) -> None:
    wire = _seal(hybrid).wire
    for pos in (0, 1, 2, 5, env.REQUEST_HEADER_SIZE + 3, len(wire) // 2, len(wire) - 1):
        bad = bytearray(wire)
        bad[pos] ^= 0x01
        with pytest.raises(env.EnvelopeError):
            env.open_request(bytes(bad), hybrid[0], server_key_id=hybrid[1])


def test_response_with_wrong_response_key(hybrid: tuple[HpkePrivateKey, bytes]) -> None:
    sealed = _seal(hybrid)
    opened = env.open_request(sealed.wire, hybrid[0], server_key_id=hybrid[1])
    wire = _stream(opened, [b"a"])
    with pytest.raises(env.ResponseTamperedError):
        env.open_response(SecretBytes.random(32), sealed.binding, wire)


@pytest.fixture
def stream(hybrid: tuple[HpkePrivateKey, bytes]) -> tuple[env.SealedRequest, bytes, list[bytes]]:
    sealed = _seal(hybrid)
    opened = env.open_request(sealed.wire, hybrid[0], server_key_id=hybrid[1])
    wire = _stream(opened, [b"c0", b"c1", b"c2", b"c3"])
    header, frames = _frames(wire)
    return sealed, header, frames


def test_response_bit_flip(stream: tuple[env.SealedRequest, bytes, list[bytes]]) -> None:
    sealed, header, frames = stream
    wire = header + b"".join(frames)
    for pos in range(3, len(wire), 97):
        bad = bytearray(wire)
        bad[pos] ^= 0x80
        with pytest.raises(env.EnvelopeError):
            sealed.open_response(bytes(bad))


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda f: [f[0], f[2], f[3], f[4]], id="dropped"),
        pytest.param(lambda f: [f[1], f[0], f[2], f[3], f[4]], id="reordered"),
        pytest.param(lambda f: [f[0], f[0], f[1], f[2], f[3], f[4]], id="replayed"),
        pytest.param(lambda f: [f[0], f[1], f[2], f[3], f[3], f[4]], id="replayed-late"),
    ],
)
def test_response_frame_manipulation(
    stream: tuple[env.SealedRequest, bytes, list[bytes]], mutate: object
) -> None:
    sealed, header, frames = stream
    bad = header + b"".join(mutate(frames))  # type: ignore[operator]
    with pytest.raises(env.ResponseTamperedError):
        sealed.open_response(bad)


def test_response_truncated(stream: tuple[env.SealedRequest, bytes, list[bytes]]) -> None:
    sealed, header, frames = stream
    for k in range(len(frames)):
        with pytest.raises(env.ResponseTruncatedError):
            sealed.open_response(header + b"".join(frames[:k]))
    with pytest.raises(env.ResponseTruncatedError):
        sealed.open_response(header + b"".join(frames)[:-5])
    with pytest.raises(env.ResponseTruncatedError):
        sealed.open_response(header[:10])


def test_final_flag_cannot_be_forged(stream: tuple[env.SealedRequest, bytes, list[bytes]]) -> None:
    sealed, header, frames = stream
    forged = bytearray(frames[1])
    forged[4] |= env.FLAG_FINAL  # claim an early end of stream
    with pytest.raises(env.ResponseTamperedError):
        sealed.open_response(header + frames[0] + bytes(forged))


def test_trailing_data_after_final(stream: tuple[env.SealedRequest, bytes, list[bytes]]) -> None:
    sealed, header, frames = stream
    with pytest.raises(env.MalformedEnvelopeError) as info:
        sealed.open_response(header + b"".join(frames) + frames[0])
    assert info.value.code == "envelope_trailing_data"


def test_frame_moved_from_another_response(hybrid: tuple[HpkePrivateKey, bytes]) -> None:
    sealed = _seal(hybrid)
    opened = env.open_request(sealed.wire, hybrid[0], server_key_id=hybrid[1])
    h1, f1 = _frames(_stream(opened, [b"a", b"b"]))
    # A second response to the very same request (a replayed request) gets a new salt.
    h2, f2 = _frames(_stream(opened, [b"a", b"b"]))
    assert h1 != h2
    with pytest.raises(env.ResponseTamperedError):
        sealed.open_response(h1 + f1[0] + f2[1] + f1[2])
    # A response to another request cannot be passed off as the answer to this one.
    other = _seal(hybrid)
    with pytest.raises(env.ResponseTamperedError):
        other.open_response(h1 + b"".join(f1))


def test_sealer_refuses_after_finish(hybrid: tuple[HpkePrivateKey, bytes]) -> None:
    sealed = _seal(hybrid)
    opened = env.open_request(sealed.wire, hybrid[0], server_key_id=hybrid[1])
    sealer = opened.sealer(env.ResponseContent.JSON)
    sealer.finish()
    with pytest.raises(env.EnvelopeError):
        sealer.seal(b"x")


def test_opener_stays_broken_after_error(
    stream: tuple[env.SealedRequest, bytes, list[bytes]],
) -> None:
    sealed, header, frames = stream
    opener = sealed.opener()
    with pytest.raises(env.ResponseTamperedError):
        opener.feed(header + frames[1])
    with pytest.raises(env.ResponseTamperedError):
        opener.feed(frames[0])
    with pytest.raises(env.ResponseTamperedError):
        opener.close()


def test_invalid_json_body_is_typed(hybrid: tuple[HpkePrivateKey, bytes]) -> None:
    sealed = _seal(hybrid, b"\xff not json")
    opened = env.open_request(sealed.wire, hybrid[0], server_key_id=hybrid[1])
    with pytest.raises(env.MalformedEnvelopeError):
        opened.json()


def test_padded_size() -> None:
    assert env.padded_size(0, 256) == 256
    assert env.padded_size(256, 256) == 256
    assert env.padded_size(257, 256) == 512
    assert env.padded_size(5000, 1024) == 8192


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.binary(max_size=2000).map(lambda b: env.request_header(Kem.X25519, _FUZZ_KID) + b),
    )
)
def test_fuzz_request_parser(data: bytes) -> None:
    with contextlib.suppress(env.EnvelopeError):
        env.open_request(data, _FUZZ_KEY, server_key_id=_FUZZ_KID)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_fuzz_response_parser(data: bytes, step: int) -> None:
    opener = env.ResponseOpener(SecretBytes(bytes(32)), bytes(32))
    with contextlib.suppress(env.EnvelopeError):
        for i in range(0, len(data), step):
            opener.feed(data[i : i + step])
        opener.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=4000), st.data())
def test_fuzz_mutated_responses(data: bytes, draw: st.DataObject) -> None:
    """Mutations of a genuine response never pass and never crash."""
    sealer = env.ResponseSealer(
        SecretBytes(bytes(32)), bytes(32), env.ResponseContent.EVENT_STREAM, salt=bytes(32)
    )
    wire = bytearray(sealer.header + sealer.seal(data) + sealer.finish(b""))
    pos = draw.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    wire[pos] ^= draw.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(env.EnvelopeError):
        env.open_response(SecretBytes(bytes(32)), bytes(32), bytes(wire))


def test_hpke_private_key_encodings() -> None:
    seed = SecretBytes(bytes(range(96)))
    a = HpkePrivateKey.from_private_bytes(Kem.MLKEM768_X25519, seed)
    b = HpkePrivateKey.from_private_bytes(Kem.MLKEM768_X25519, SecretBytes(bytes(range(96))))
    assert a.public_key == b.public_key  # deterministic from the seed
    for kem, size in ((Kem.X25519, 31), (Kem.MLKEM768_X25519, 95), (Kem.X25519, 96)):
        with pytest.raises(HpkeError):
            HpkePrivateKey.from_private_bytes(kem, SecretBytes(bytes(size)))
    with pytest.raises(HpkeError):
        Kem.from_suite_id(9)
    assert "bytes" not in repr(a) and "HpkePrivateKey(mlkem768-x25519" in repr(a)
