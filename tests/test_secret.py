import pickle

import pytest

from teellm.crypto.secret import SecretBytes, zeroize


def test_repr_never_shows_bytes() -> None:
    s = SecretBytes(b"\x41" * 32, label="content key")
    assert "41" not in repr(s) and "AAAA" not in repr(s) and "AAAA" not in str(s)
    assert "content key" in repr(s)


def test_zeroize_wipes_the_buffer_we_held() -> None:
    src = bytearray(b"k" * 16)
    s = SecretBytes.from_buffer(src)
    s.zeroize()
    assert src == bytearray(16)
    assert s.wiped
    with pytest.raises(ValueError, match="zeroized"):
        s.reveal()


def test_constructor_wipes_a_bytearray_source() -> None:
    src = bytearray(b"secret!!")
    s = SecretBytes(src)
    assert src == bytearray(8)
    assert s.bytes() == b"secret!!"


def test_context_manager_and_equality() -> None:
    with SecretBytes(b"abc") as a:
        assert a == SecretBytes(b"abc")
        assert a != SecretBytes(b"abd")
    assert a.wiped


def test_cannot_pickle() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(SecretBytes(b"x"))


def test_zeroize_memoryview() -> None:
    buf = bytearray(b"abcdef")
    zeroize(memoryview(buf)[2:4])
    assert buf == bytearray(b"ab\x00\x00ef")
