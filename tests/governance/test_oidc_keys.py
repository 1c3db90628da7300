"""OidcVerifier: fetching the JWKS, following key rotation, failures and time-outs, and the
verified-token cache."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keel.errors import ConfigError
from keel.governance import oidc
from keel.governance.config import OidcIssuerConfig
from keel.governance.oidc import OidcVerifier
from tests.governance.oidc_helpers import (
    ISSUER,
    FakeIdp,
    mint,
    public_jwk,
    refused,
    url_issuer,
)

# -- key rotation and fetching -------------------------------------------------------------


async def test_unknown_kid_refetches_once_to_follow_rotation(
    idp: FakeIdp,
    verifier: OidcVerifier,
    rsa_key: rsa.RSAPrivateKey,
    rotated_rsa_key: rsa.RSAPrivateKey,
) -> None:
    assert idp.fetches == 1  # start()
    await verifier.verify(mint(rsa_key))
    assert idp.fetches == 1  # keys are cached: no network per request

    idp.keys = [public_jwk(rsa_key, "k1"), public_jwk(rotated_rsa_key, "k2")]
    actor = await verifier.verify(mint(rotated_rsa_key, kid="k2"))
    assert actor.name == "oidc:alice@example.com"
    assert idp.fetches == 2

    # Another unknown key id within 30 s: refused without fetching again.
    for _ in range(3):
        error = await refused(verifier, mint(rotated_rsa_key, kid="k3"))
        assert error.message == "token signing key is not known"
    assert idp.fetches == 2


async def test_refetch_limit_expires(
    idp: FakeIdp,
    verifier: OidcVerifier,
    rotated_rsa_key: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await refused(verifier, mint(rotated_rsa_key, kid="k2"))
    assert idp.fetches == 2
    idp.keys.append(public_jwk(rotated_rsa_key, "k2"))
    monkeypatch.setattr(oidc, "_REFETCH_INTERVAL_S", 0.0)
    await verifier.verify(mint(rotated_rsa_key, kid="k2"))
    assert idp.fetches == 3


async def test_concurrent_unknown_kids_share_one_fetch(
    idp: FakeIdp, verifier: OidcVerifier, rotated_rsa_key: rsa.RSAPrivateKey
) -> None:
    idp.keys.append(public_jwk(rotated_rsa_key, "k2"))
    tokens = [mint(rotated_rsa_key, kid="k2", sub=f"user-{i}") for i in range(20)]
    actors = await asyncio.gather(*(verifier.verify(token) for token in tokens))
    assert {actor.name for actor in actors} == {f"oidc:user-{i}" for i in range(20)}
    assert idp.fetches == 2


async def test_withdrawn_key_stops_verifying_after_refetch(
    idp: FakeIdp,
    verifier: OidcVerifier,
    rsa_key: rsa.RSAPrivateKey,
    rotated_rsa_key: rsa.RSAPrivateKey,
) -> None:
    old_token = mint(rsa_key)
    await verifier.verify(old_token)  # now remembered as verified
    idp.keys = [public_jwk(rotated_rsa_key, "k2")]
    await verifier.verify(mint(rotated_rsa_key, kid="k2"))  # refetch: k1 is gone

    error = await refused(verifier, old_token)
    assert error.message == "token signing key is not known"


async def test_stale_keys_refresh_in_the_background(
    idp: FakeIdp, jwks_url: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = OidcVerifier([url_issuer(jwks_url)], jwks_cache_s=0.0)
    try:
        await verifier.start()
        await verifier.verify(mint(rsa_key))  # served from the stale keys at once
        refresh = verifier._issuers[ISSUER].fetch
        assert refresh is not None
        await refresh
        assert idp.fetches == 2
    finally:
        await verifier.aclose()


async def test_failing_background_refresh_keeps_the_old_keys_and_backs_off(
    idp: FakeIdp, jwks_url: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = OidcVerifier([url_issuer(jwks_url)], jwks_cache_s=0.0)
    try:
        await verifier.start()
        idp.status = 500
        for _ in range(5):
            await verifier.verify(mint(rsa_key, sub=f"user-{_}"))
            fetch = verifier._issuers[ISSUER].fetch
            assert fetch is not None
            await fetch
        # One failed refresh; the next waits out the back-off instead of one fetch per request.
        assert idp.fetches == 2
    finally:
        await verifier.aclose()


async def test_a_client_going_away_does_not_cancel_the_shared_refetch(
    idp: FakeIdp, verifier: OidcVerifier, rotated_rsa_key: rsa.RSAPrivateKey
) -> None:
    idp.keys.append(public_jwk(rotated_rsa_key, "k2"))
    idp.delay_s = 0.3
    impatient = asyncio.create_task(verifier.verify(mint(rotated_rsa_key, kid="k2", sub="a")))
    await asyncio.sleep(0.1)
    impatient.cancel()
    actor = await verifier.verify(mint(rotated_rsa_key, kid="k2", sub="b"))
    assert actor.name == "oidc:b"
    assert idp.fetches == 2
    with pytest.raises(asyncio.CancelledError):
        await impatient


async def test_slow_jwks_url_times_out(
    idp: FakeIdp, jwks_url: str, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    idp.delay_s = 1.0
    verifier = OidcVerifier([url_issuer(jwks_url)], fetch_timeout_s=0.2)
    try:
        with caplog.at_level(logging.WARNING, logger="keel.governance.oidc"):
            await verifier.start()
        # The fetch gave up at its own timeout (the server would have answered after 1 s).
        assert "TimeoutError" in caplog.text
        error = await refused(verifier, mint(rsa_key))
        assert error.message == "token signing keys are unavailable"
    finally:
        await verifier.aclose()


async def test_unreachable_jwks_at_start_is_retried_on_demand(
    idp: FakeIdp,
    jwks_url: str,
    rsa_key: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    idp.status = 503
    verifier = OidcVerifier([url_issuer(jwks_url)], fetch_timeout_s=2.0)
    try:
        with caplog.at_level(logging.WARNING, logger="keel.governance.oidc"):
            await verifier.start()  # logged, not raised
        assert "HTTP 503" in caplog.text
        error = await refused(verifier, mint(rsa_key))
        assert error.message == "token signing keys are unavailable"
        assert idp.fetches == 1  # the failed start is not retried at once

        idp.status = 200
        monkeypatch.setattr(oidc, "_RETRY_AFTER_FAILURE_S", 0.0)
        actor = await verifier.verify(mint(rsa_key))
        assert actor.name == "oidc:alice@example.com"
        assert idp.fetches == 2
    finally:
        await verifier.aclose()


async def test_bad_jwks_file_fails_start(tmp_path: Path) -> None:
    missing = OidcVerifier([OidcIssuerConfig(issuer=ISSUER, jwks_file=tmp_path / "nope.json")])
    with pytest.raises(ConfigError):
        await missing.start()
    (tmp_path / "empty.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    symmetric = OidcVerifier([OidcIssuerConfig(issuer=ISSUER, jwks_file=tmp_path / "empty.json")])
    with pytest.raises(ConfigError, match="no asymmetric signature keys"):
        await symmetric.start()


def test_duplicate_issuer_is_a_config_error(jwks_url: str) -> None:
    with pytest.raises(ConfigError):
        OidcVerifier([url_issuer(jwks_url), url_issuer(jwks_url)])


def test_enabled() -> None:
    assert not OidcVerifier([]).enabled
    assert OidcVerifier([OidcIssuerConfig(issuer=ISSUER, jwks_url="http://x/")]).enabled


# -- the verified-token cache --------------------------------------------------------------


async def test_repeat_verification_is_remembered_per_token(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = mint(rsa_key)
    first = await verifier.verify(token, source_ip="10.0.0.1")
    second = await verifier.verify(token, source_ip="10.0.0.2")
    assert first.source_ip == "10.0.0.1" and second.source_ip == "10.0.0.2"
    assert first.name == second.name and first.roles == second.roles
    assert len(verifier._verified) == 1
    # Remembered no longer than a minute, and never past the token's own expiry.
    (_, expires_at), *_ = verifier._verified.values()
    assert expires_at <= time.time() + 60

    short = mint(rsa_key, exp=int(time.time()) - 5)  # expired, but inside the leeway
    await verifier.verify(short)
    assert len(verifier._verified) == 1
