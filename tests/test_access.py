"""Access control: tokens hashed, constant-time checks, deny by default, limits."""

from __future__ import annotations

import contextlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teellm.server import access
from teellm.server.access import AccessError, AccessPolicy, Tenant, hash_token, new_token


def _policy() -> tuple[AccessPolicy, str, str]:
    tok_a, hash_a = new_token()
    tok_b, hash_b = new_token()
    policy = AccessPolicy(
        tenants=[
            Tenant(name="alpha", token_hashes=[hash_a], models=["m-a"], max_tokens=64),
            Tenant(
                name="beta",
                token_hashes=[hash_b],
                models=["*"],
                max_input_length=10,
                requests_per_minute=2,
            ),
        ]
    )
    return policy, tok_a, tok_b


def test_tokens_are_stored_only_hashed() -> None:
    policy, tok_a, tok_b = _policy()
    dumped = policy.to_yaml()
    assert tok_a not in dumped and tok_b not in dumped
    assert hash_token(tok_a) in dumped
    assert AccessPolicy.from_yaml(dumped).authenticate(tok_a).name == "alpha"


def test_authenticate() -> None:
    policy, tok_a, tok_b = _policy()
    assert policy.authenticate(tok_a).name == "alpha"
    assert policy.authenticate(tok_b).name == "beta"
    for bad, code in [
        (None, "missing_api_key"),
        ("", "missing_api_key"),
        ("tk-x", "invalid_api_key"),
    ]:
        with pytest.raises(AccessError) as ei:
            policy.authenticate(bad)
        assert ei.value.status == 401 and ei.value.code == code


def test_deny_by_default() -> None:
    tok, _ = new_token()
    with pytest.raises(AccessError) as ei:
        AccessPolicy().authenticate(tok)
    assert ei.value.status == 401
    # A tenant with no models listed may use none.
    t = Tenant(name="t", token_hashes=[hash_token(tok)])
    with pytest.raises(AccessError) as ei:
        AccessPolicy(tenants=[t]).authorize(t, model_id="m")
    assert ei.value.status == 403


def test_every_hash_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the number of comparisons is independent of which tenant matches."""
    tokens = [new_token() for _ in range(5)]
    policy = AccessPolicy(
        tenants=[
            Tenant(name=f"t{i}", token_hashes=[h], models=["*"]) for i, (_, h) in enumerate(tokens)
        ]
    )
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", counting)
    counts = []
    for tok, _ in tokens:
        calls.clear()
        policy.authenticate(tok)
        counts.append(len(calls))
    calls.clear()
    with pytest.raises(AccessError):
        policy.authenticate("tk-unknown")
    counts.append(len(calls))
    assert counts == [5] * 6


def test_authorize_models_and_limits() -> None:
    policy, tok_a, tok_b = _policy()
    alpha, beta = policy.authenticate(tok_a), policy.authenticate(tok_b)
    policy.authorize(alpha, model_id="m-a", max_tokens=64)
    policy.authorize(beta, model_id="anything", input_length=10)
    cases = [
        (alpha, {"model_id": "m-b"}, "model_not_allowed"),
        (alpha, {"model_id": "m-a", "max_tokens": 65}, "max_tokens_exceeded"),
        (beta, {"model_id": "m-a", "input_length": 11}, "input_length_exceeded"),
    ]
    for tenant, kw, code in cases:
        with pytest.raises(AccessError) as ei:
            policy.authorize(tenant, **kw)  # type: ignore[arg-type]
        assert (ei.value.status, ei.value.code) == (403, code)


def test_rate_limit_per_tenant() -> None:
    policy, tok_a, tok_b = _policy()
    now = [1000.0]
    policy.set_clock(lambda: now[0])
    beta, alpha = policy.authenticate(tok_b), policy.authenticate(tok_a)
    policy.check_rate(beta)
    policy.check_rate(beta)
    with pytest.raises(AccessError) as ei:
        policy.check_rate(beta)
    assert ei.value.status == 429 and int(ei.value.headers["Retry-After"]) >= 1
    policy.check_rate(alpha)  # another tenant is unaffected
    now[0] += 30.0  # 2 per minute: one request back after 30 s
    policy.check_rate(beta)
    with pytest.raises(AccessError):
        policy.check_rate(beta)


def test_policy_validation() -> None:
    _, h = new_token()
    bad_yaml = [
        "tenants: [",
        "tenants: 5",
        "tenants:\n  - name: a\n    token_hashes: ['md5:00']\n",
        "tenants:\n  - name: a\n    unknown_field: 1\n",
        f"tenants:\n  - name: a\n    token_hashes: ['{h}']\n"
        f"  - name: b\n    token_hashes: ['{h}']\n",
        "tenants:\n  - name: a\n  - name: a\n",
    ]
    for text in bad_yaml:
        with pytest.raises(AccessError) as ei:
            AccessPolicy.from_yaml(text)
        assert ei.value.code == "access_policy_invalid"


def test_policy_from_file(tmp_path: object) -> None:
    from pathlib import Path

    tok, h = new_token()
    path = Path(str(tmp_path)) / "access.yaml"
    path.write_text(f"tenants:\n  - name: a\n    token_hashes: ['{h}']\n    models: [m]\n")
    for source in (path, str(path)):
        assert AccessPolicy.from_yaml(source).authenticate(tok).name == "a"


@given(st.text(max_size=200))
def test_fuzz_yaml_never_crashes(text: str) -> None:
    with contextlib.suppress(AccessError):
        AccessPolicy.from_yaml(text)


@given(st.text(max_size=100))
def test_fuzz_tokens_never_authenticate(token: str) -> None:
    policy, _, _ = _policy()
    with pytest.raises(AccessError):
        policy.authenticate(token)


def test_model_settings_take_an_access_policy() -> None:
    import pydantic

    from teellm.settings import ModelSettings

    tok, h = new_token()
    yaml_text = f"tenants:\n  - name: a\n    token_hashes: ['{h}']\n    models: [m]\n"
    for value in (yaml_text, AccessPolicy.from_yaml(yaml_text).model_dump()):
        policy = ModelSettings(access_control=value).access_control
        assert isinstance(policy, AccessPolicy) and policy.authenticate(tok).name == "a"
    assert ModelSettings().access_control is None
    with pytest.raises(pydantic.ValidationError):
        ModelSettings(access_control=42)


def test_rate_limiter_forgets_idle_buckets_when_there_are_many() -> None:
    from teellm.server.access import RateLimiter

    now = [0.0]
    limiter = RateLimiter(lambda: now[0])
    limiter.MAX_KEYS = 100
    for i in range(100):
        assert limiter.take(f"addr{i}", 1) == 0.0
    assert limiter.take("addr0", 1) > 0  # still limited while remembered
    now[0] = 61.0
    assert limiter.take("new", 1) == 0.0
    assert len(limiter) == 1  # the idle, refilled buckets were dropped
