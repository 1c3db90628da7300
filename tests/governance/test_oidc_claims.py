"""OidcVerifier: a valid token's claims become an actor; time, audience and issuer checks."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keel.governance.config import OidcIssuerConfig
from keel.governance.oidc import OidcVerifier
from tests.governance.oidc_helpers import (
    AUDIENCE,
    ISSUER,
    FakeIdp,
    mint,
    public_jwk,
    refused,
    url_issuer,
)

# -- the happy path and claim mapping ------------------------------------------------------


async def test_valid_token_becomes_an_oidc_actor(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    actor = await verifier.verify(mint(rsa_key), source_ip="10.0.0.9")

    assert actor.name == "oidc:alice@example.com"
    assert actor.roles == frozenset({"developer"})
    assert actor.kind == "oidc"
    assert actor.team == "research"
    assert actor.environment == "production"
    assert actor.source_ip == "10.0.0.9"
    assert actor.key_id is None
    digest = hashlib.sha256(f"{ISSUER}\nalice@example.com".encode()).hexdigest()
    assert actor.principal_id == f"oidc:{digest[:16]}"


async def test_jwks_file_issuer_with_ec_keys(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [public_jwk(ec_key, "ec-1")]}))
    config = OidcIssuerConfig(
        issuer=ISSUER, jwks_file=jwks_file, algorithms=["ES256"], environment="sandbox"
    )
    verifier = OidcVerifier([config])
    await verifier.start()
    try:
        actor = await verifier.verify(mint(ec_key, "ES256", "ec-1", aud="anything"))
    finally:
        await verifier.aclose()

    assert actor.name == "oidc:alice@example.com"
    assert actor.environment == "sandbox"


@pytest.mark.parametrize(
    ("role_claim", "expected"),
    [
        ("maintainer", {"maintainer"}),
        (["developer", "admin"], {"developer", "admin"}),
        (["developer", "root", 7], {"developer"}),
        ("superuser", {"viewer"}),
        (None, {"viewer"}),
        (42, {"viewer"}),
        ([], {"viewer"}),
    ],
)
async def test_role_claim_mapping(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey, role_claim: Any, expected: set[str]
) -> None:
    actor = await verifier.verify(mint(rsa_key, keel_role=role_claim))
    assert actor.roles == frozenset(expected)


async def test_configured_claim_names_and_default_role(
    idp: FakeIdp, jwks_url: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    config = url_issuer(
        jwks_url,
        user_claim="email",
        team_claim="org_unit",
        role_claim="groups",
        default_role="developer",
    )
    verifier = OidcVerifier([config])
    try:
        actor = await verifier.verify(
            mint(rsa_key, email="bob@example.com", org_unit="infra", groups=["staff"])
        )
        no_team = OidcVerifier([url_issuer(jwks_url, team_claim=None)])
        try:
            anonymous_team = await no_team.verify(mint(rsa_key))
        finally:
            await no_team.aclose()
    finally:
        await verifier.aclose()

    assert (actor.name, actor.team, actor.roles) == (
        "oidc:bob@example.com",
        "infra",
        frozenset({"developer"}),
    )
    assert anonymous_team.team is None


@pytest.mark.parametrize("subject", [None, "", "x" * 129, 12345, "tab\there"])
async def test_unusable_user_claim_is_refused(
    idp: FakeIdp, jwks_url: str, rsa_key: rsa.RSAPrivateKey, subject: Any
) -> None:
    # PyJWT itself refuses a non-string `sub`; read another claim to reach Keel's own check.
    verifier = OidcVerifier([url_issuer(jwks_url, user_claim="uid")])
    try:
        error = await refused(verifier, mint(rsa_key, uid=subject))
    finally:
        await verifier.aclose()
    assert error.message == "token has no usable uid claim"


async def test_team_claim_that_is_not_a_name_is_refused(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    error = await refused(verifier, mint(rsa_key, team=["a", "b"]))
    assert error.message == "token has no usable team claim"
    assert (await verifier.verify(mint(rsa_key, team=""))).team is None


# -- time, audience, issuer ----------------------------------------------------------------


async def test_expired_token(verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    error = await refused(verifier, mint(rsa_key, iat=now - 600, exp=now - 120))
    assert error.message == "token expired"
    # Within the 30 s leeway for clock drift.
    await verifier.verify(mint(rsa_key, iat=now - 600, exp=now - 10))


async def test_token_without_exp_is_refused(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    error = await refused(verifier, mint(rsa_key, exp=None))
    assert error.message == "token is missing the exp claim"


async def test_not_yet_valid_token(verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    error = await refused(verifier, mint(rsa_key, nbf=now + 300))
    assert error.message == "token is not yet valid"
    await verifier.verify(mint(rsa_key, nbf=now + 10))


async def test_audience(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey, idp: FakeIdp, jwks_url: str
) -> None:
    error = await refused(verifier, mint(rsa_key, aud="someone-else"))
    assert error.message == "token audience is not accepted"
    error = await refused(verifier, mint(rsa_key, aud=None))
    assert error.message == "token is missing the aud claim"
    await verifier.verify(mint(rsa_key, aud=["other", AUDIENCE]))

    any_audience = OidcVerifier([url_issuer(jwks_url, audience=None)])
    try:
        await any_audience.verify(mint(rsa_key, aud="someone-else"))
        await any_audience.verify(mint(rsa_key, aud=None))
    finally:
        await any_audience.aclose()


@pytest.mark.parametrize(
    "iss", ["https://evil.example.com/", ISSUER.rstrip("/"), None, 7, [ISSUER]]
)
async def test_untrusted_issuer(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey, iss: Any
) -> None:
    error = await refused(verifier, mint(rsa_key, iss=iss))
    assert error.message == "token issuer is not trusted"
