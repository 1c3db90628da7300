"""OidcVerifier against real keys and a JWKS served over a real loopback socket (or a file)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, Response

from keel.errors import AuthenticationError, ConfigError
from keel.governance import oidc
from keel.governance.config import OidcIssuerConfig
from keel.governance.oidc import OidcVerifier
from tests.fakes.server import serve_on_loopback

ISSUER = "https://idp.example.com/"
AUDIENCE = "keel"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rotated_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: PrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    else:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
    if kid is not None:
        jwk["kid"] = kid
    jwk["use"] = "sig"
    jwk.update(extra)
    return jwk


def mint(key: PrivateKey, alg: str = "RS256", kid: str | None = "k1", **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice@example.com",
        "team": "research",
        "keel_role": "developer",
        "iat": now,
        "exp": now + 300,
    }
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}
    headers = {"kid": kid} if kid is not None else None
    # Signed as raw JWS so tests can sign claims that PyJWT's encoder would refuse (`iss: 7`).
    return jwt.api_jws.PyJWS().encode(json.dumps(body).encode(), key, alg, headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


class FakeIdp:
    """Serves a JWKS document that tests replace, and counts how often it is fetched."""

    def __init__(self) -> None:
        self.reset()
        self.app = FastAPI()
        self.app.add_api_route("/jwks.json", self._jwks, methods=["GET"])

    def reset(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.delay_s = 0.0
        self.fetches = 0

    async def _jwks(self) -> Response:
        self.fetches += 1
        await asyncio.sleep(self.delay_s)
        return Response(
            json.dumps({"keys": self.keys}), status_code=self.status, media_type="application/json"
        )


@pytest.fixture(scope="module")
def served_idp() -> Iterator[tuple[FakeIdp, str]]:
    fake = FakeIdp()
    with serve_on_loopback(fake.app) as url:
        yield fake, url + "/jwks.json"


@pytest.fixture
def idp(served_idp: tuple[FakeIdp, str], rsa_key: rsa.RSAPrivateKey) -> FakeIdp:
    fake = served_idp[0]
    fake.reset()
    fake.keys = [public_jwk(rsa_key, "k1")]
    return fake


@pytest.fixture
def jwks_url(served_idp: tuple[FakeIdp, str]) -> str:
    return served_idp[1]


def url_issuer(jwks_url: str, **overrides: Any) -> OidcIssuerConfig:
    fields: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_url}
    return OidcIssuerConfig.model_validate(fields | overrides)


@pytest.fixture
async def verifier(idp: FakeIdp, jwks_url: str) -> AsyncIterator[OidcVerifier]:
    verifier = OidcVerifier([url_issuer(jwks_url)])
    await verifier.start()
    yield verifier
    await verifier.aclose()


async def refused(verifier: OidcVerifier, token: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token, source_ip="10.0.0.9")
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_token"
    return caught.value


# -- the happy path and claim mapping ------------------------------------------------------


async def test_valid_token_becomes_an_oidc_actor(
    verifier: OidcVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    actor = await verifier.verify(mint(rsa_key), source_ip="10.0.0.9")

    assert actor.name == "alice@example.com"
    assert actor.roles == frozenset({"developer"})
    assert actor.kind == "oidc"
    assert actor.team == "research"
    assert actor.environment == "production"
    assert actor.source_ip == "10.0.0.9"
    assert actor.key_id is None and actor.principal_id is None


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

    assert actor.name == "alice@example.com"
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
        "bob@example.com",
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
    assert actor.name == "alice@example.com"
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
    assert actor.name == "alice@example.com"
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
    assert {actor.name for actor in actors} == {f"user-{i}" for i in range(20)}
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
    assert actor.name == "b"
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
            started = time.monotonic()
            await verifier.start()
        assert time.monotonic() - started < 0.9
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
        assert actor.name == "alice@example.com"
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
    assert actor.name == "alice@example.com"
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
