"""OidcVerifier: signatures, algorithms and key types; malformed tokens, and refusals that
never carry the token."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import traceback

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keel.governance.oidc import OidcVerifier
from tests.governance.oidc_helpers import (
    AUDIENCE,
    ISSUER,
    FakeIdp,
    b64,
    mint,
    public_jwk,
    refused,
    unsigned,
    url_issuer,
)

# -- signatures and algorithms -------------------------------------------------------------


async def test_signature_by_another_key_is_refused(
    verifier: OidcVerifier, rotated_rsa_key: rsa.RSAPrivateKey
) -> None:
    # Claims the trusted key id but is signed by a key the issuer never published.
    error = await refused(verifier, mint(rotated_rsa_key, kid="k1"))
    assert error.message == "token signature is invalid"


async def test_tampered_payload_is_refused(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    header, _, signature = mint(rsa_key).split(".")
    now = int(time.time())
    forged = b64(
        json.dumps(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": "mallory",
                "keel_role": "admin",
                "exp": now + 60,
            }
        ).encode()
    )
    error = await refused(verifier, f"{header}.{forged}.{signature}")
    assert error.message == "token signature is invalid"


async def test_alg_none_is_refused(verifier: OidcVerifier) -> None:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 60}
    for header in ({"alg": "none", "kid": "k1"}, {"alg": "None"}, {"typ": "JWT"}):
        token = unsigned(header, claims) + "."
        assert OidcVerifier.looks_like_jwt(token)
        error = await refused(verifier, token)
        assert error.message == "token algorithm is not accepted"


async def test_hs256_signed_with_the_public_key_is_refused(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    # The classic confusion attack: HMAC keyed with the issuer's published public key.
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 60}
    signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims)
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    error = await refused(verifier, f"{signing_input}.{b64(signature)}")
    assert error.message == "token algorithm is not accepted"


async def test_algorithm_must_match_the_key_type(
    verifier: OidcVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    # ES256 is allowed for the issuer, but key k1 is an RSA key.
    error = await refused(verifier, mint(ec_key, "ES256", "k1"))
    assert error.message == "token algorithm does not match its signing key"


async def test_algorithm_outside_the_issuer_list_is_refused(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    error = await refused(verifier, mint(rsa_key, "RS512"))
    assert error.message == "token algorithm is not accepted"


async def test_rsa_key_without_alg_serves_ps256(
    idp: FakeIdp, jwks_url: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = OidcVerifier([url_issuer(jwks_url, algorithms=["PS256"])])
    try:
        actor = await verifier.verify(mint(rsa_key, "PS256"))
        error = await refused(verifier, mint(rsa_key, "RS256"))
    finally:
        await verifier.aclose()
    assert actor.name == "oidc:alice@example.com"
    assert error.message == "token algorithm is not accepted"


async def test_jwk_alg_pins_the_algorithm(
    idp: FakeIdp, jwks_url: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    idp.keys = [public_jwk(rsa_key, "k1", alg="PS256")]
    verifier = OidcVerifier([url_issuer(jwks_url, algorithms=["RS256", "PS256"])])
    try:
        await verifier.verify(mint(rsa_key, "PS256"))
        error = await refused(verifier, mint(rsa_key, "RS256"))
    finally:
        await verifier.aclose()
    assert error.message == "token algorithm does not match its signing key"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_short_rsa_key_is_not_usable(idp: FakeIdp, jwks_url: str) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    idp.keys = [public_jwk(weak, "weak")]
    verifier = OidcVerifier([url_issuer(jwks_url)])
    try:
        error = await refused(verifier, mint(weak, kid="weak"))
    finally:
        await verifier.aclose()
    assert error.message == "token signing key is not usable"


async def test_token_without_kid(
    idp: FakeIdp,
    jwks_url: str,
    verifier: OidcVerifier,
    rsa_key: rsa.RSAPrivateKey,
    rotated_rsa_key: rsa.RSAPrivateKey,
) -> None:
    # One key that fits: used. Two: the token must say which.
    await verifier.verify(mint(rsa_key, kid=None))
    idp.keys = [public_jwk(rsa_key, "k1"), public_jwk(rotated_rsa_key, "k2")]
    two_keys = OidcVerifier([url_issuer(jwks_url)])
    try:
        error = await refused(two_keys, mint(rsa_key, kid=None))
    finally:
        await two_keys.aclose()
    assert error.message == "token has no key id"


# -- malformed input and secrecy -----------------------------------------------------------

_HEADER = b64(json.dumps({"alg": "RS256", "kid": "k1"}).encode())
MALFORMED = [
    "",
    "junk",
    "keel_sk_live_0123456789abcdef",
    "abc.def",
    "a.b.c.d",
    "a..c",
    "!!!.???.***",
    "eyJ.eyJ.x",
    f"{b64(b'not json')}.{b64(b'{}')}.c2ln",
    f"{b64(b'[1, 2]')}.{b64(b'{}')}.c2ln",
    f"{_HEADER}.{b64(b'not json')}.c2ln",
    f"{_HEADER}.{b64(b'[1]')}.c2ln",
    f"{_HEADER}.{b64(json.dumps({'iss': ISSUER}).encode())}.c2ln",
    f"{b64(json.dumps({'alg': 'RS256', 'kid': 5}).encode())}.{b64(b'{}')}.c2ln",
    "A" * 5000 + "." + "B" * 5000 + "." + "C" * 300,  # ~10 KB
    "A" * 20_000 + ".B.C",
    "eyJhbGciOiJSUzI1NiJ9.\u00e9\u00e9.c2ln",
]


@pytest.mark.parametrize("token", MALFORMED)
async def test_malformed_tokens_are_401(verifier: OidcVerifier, token: str) -> None:
    await refused(verifier, token)


async def test_huge_well_formed_token_is_401(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = mint(rsa_key, padding="p" * 10_000)
    assert len(token) > 10_000
    actor = await verifier.verify(token)  # large, but under the limit: fine
    assert actor.name == "oidc:alice@example.com"
    await refused(verifier, mint(rsa_key, padding="p" * 20_000))


async def test_refusals_never_carry_the_token(
    verifier: OidcVerifier,
    rsa_key: rsa.RSAPrivateKey,
    rotated_rsa_key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = int(time.time())
    marker = "MARKER-7f3a9c"
    tokens = [
        mint(rsa_key, exp=now - 300, sub=marker),
        mint(rotated_rsa_key, sub=marker),
        mint(rsa_key, iss=f"https://{marker}.example/"),
        mint(rsa_key, aud=marker),
        mint(rotated_rsa_key, kid=marker),
        mint(rsa_key, sub=marker * 20),
        mint(rsa_key, team=[marker]),
        *MALFORMED,
        f"{_HEADER}.{b64(marker.encode())}.c2ln",
    ]
    with caplog.at_level(logging.DEBUG):
        for token in tokens:
            error = await refused(verifier, token)
            rendered = "".join(traceback.format_exception(error)) + json.dumps(error.to_body())
            assert marker not in rendered
            for segment in token.split("."):
                if len(segment) >= 8:
                    assert segment not in rendered
            assert error.__cause__ is None and error.__suppress_context__
    logged = caplog.text + "".join(str(record.args) for record in caplog.records)
    assert marker not in logged
    for token in tokens:
        for segment in token.split("."):
            if len(segment) >= 8:
                assert segment not in logged


def test_looks_like_jwt(rsa_key: rsa.RSAPrivateKey) -> None:
    assert OidcVerifier.looks_like_jwt(mint(rsa_key))
    for key in ("keel_sk_live_0123456789abcdef", "keel_sk_a.b", "sk-proj-abc", "abc.def", ""):
        assert not OidcVerifier.looks_like_jwt(key)
