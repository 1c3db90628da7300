"""OIDC test helpers: an issuer, tokens signed with real keys, and a fake identity provider
serving a JWKS (the fixtures that build them are in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, Response

from keel.errors import AuthenticationError
from keel.governance.config import OidcIssuerConfig
from keel.governance.oidc import OidcVerifier

ISSUER = "https://idp.example.com/"
AUDIENCE = "keel"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


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


def url_issuer(jwks_url: str, **overrides: Any) -> OidcIssuerConfig:
    fields: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_url}
    return OidcIssuerConfig.model_validate(fields | overrides)


async def refused(verifier: OidcVerifier, token: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token, source_ip="10.0.0.9")
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_token"
    return caught.value
