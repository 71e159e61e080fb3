"""OpenAI request parsing: strict types, clean 400s, fuzzed with hypothesis."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teellm.errors import TeellmError
from teellm.server.errors import ApiError, error_body, from_teellm_error
from teellm.server.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_request,
    sse,
)

CANARY = "CANARY-7f3a-secret-prompt"


def _chat(**extra: object) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(extra)
    return json.dumps(body).encode()


def test_valid_chat() -> None:
    req = parse_request(
        ChatCompletionRequest,
        _chat(
            temperature=0,
            max_completion_tokens=7,
            stop="x",
            stream=True,
            stream_options={"include_usage": True},
            unknown_extra={"ignored": 1},
        ),
    )
    assert req.requested_max_tokens() == 7
    assert req.stop_list() == ["x"]
    assert req.engine_messages() == [{"role": "user", "content": "hi"}]
    kw = req.sampling_kwargs(7)
    assert kw["temperature"] == 0.0 and kw["max_tokens"] == 7


def test_content_parts_and_defaults() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
    }
    req = parse_request(ChatCompletionRequest, json.dumps(body).encode())
    assert req.engine_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]
    assert req.sampling_kwargs(5)["temperature"] == 1.0  # OpenAI's default


@pytest.mark.parametrize(
    "body,param",
    [
        (b"{", None),
        (b"", None),
        (b"[]", None),
        (b"\xff\xfe\x00", None),
        (_chat(max_tokens="5"), "max_tokens"),
        (_chat(max_tokens=0), "max_tokens"),
        (_chat(temperature=3), "temperature"),
        (_chat(stream="yes"), "stream"),
        (_chat(n=2), "n"),
        (_chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (json.dumps({"model": "m", "messages": []}).encode(), "messages"),
        (json.dumps({"model": "m", "messages": [{"role": "tool", "content": "x"}]}).encode(), None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
    ],
)
def test_bad_requests_are_400(body: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as ei:
        parse_request(ChatCompletionRequest, body)
    assert ei.value.status == 400
    if param is not None:
        assert ei.value.param == param
    assert ei.value.body()["error"]["type"] == "invalid_request_error"


def test_error_messages_never_echo_values() -> None:
    body = json.dumps(
        {"model": "m", "messages": [{"role": CANARY, "content": CANARY}], "max_tokens": CANARY}
    ).encode()
    with pytest.raises(ApiError) as ei:
        parse_request(ChatCompletionRequest, body)
    assert CANARY not in json.dumps(ei.value.body())


def test_completion_request() -> None:
    req = parse_request(CompletionRequest, b'{"model":"m","prompt":["once"],"max_tokens":3}')
    assert req.prompt_text() == "once"
    for bad in (b'{"model":"m","prompt":["a","b"]}', b'{"model":"m","prompt":"a","echo":true}'):
        with pytest.raises(ApiError):
            parse_request(CompletionRequest, bad)


def test_error_mapping() -> None:
    assert error_body("x", status=429)["error"]["type"] == "rate_limit_error"
    mapped = from_teellm_error(TeellmError("too long", code="context_length_exceeded"))
    assert mapped.status == 400
    hidden = from_teellm_error(TeellmError(f"internal detail {CANARY}", code="weird"))
    assert hidden.status == 500 and CANARY not in str(hidden)


def test_sse_framing() -> None:
    assert sse({"a": 1}) == b'data: {"a":1}\n\n'


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": _json,
        "messages": st.lists(
            st.fixed_dictionaries(
                {}, optional={"role": _json | st.sampled_from(["user", "system"]), "content": _json}
            ),
            max_size=3,
        )
        | _json,
        "prompt": _json,
        "max_tokens": _json,
        "temperature": _json,
        "stream": _json,
        "stop": _json,
        "top_p": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(_fields)
def test_fuzz_structured_bodies(body: dict) -> None:
    raw = json.dumps(body).encode()
    for model in (ChatCompletionRequest, CompletionRequest):
        try:
            parse_request(model, raw)
        except ApiError as exc:
            assert exc.status == 400


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_raw_bytes(raw: bytes) -> None:
    for model in (ChatCompletionRequest, CompletionRequest):
        try:
            parse_request(model, raw)
        except ApiError as exc:
            assert exc.status == 400


def test_deeply_nested_json_is_a_clean_400() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    for body in (b'{"model":"m","messages":' + deep + b"}", deep):
        with pytest.raises(ApiError) as ei:
            parse_request(ChatCompletionRequest, body)
        assert ei.value.status == 400
