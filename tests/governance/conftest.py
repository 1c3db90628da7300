"""Fixtures shared by the governance tests: a database on SQLite and PostgreSQL with an
audit log on it, and RSA/EC keys with a fake identity provider for OIDC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keel.governance.audit import AuditLog
from keel.governance.oidc import OidcVerifier
from keel.store import Database
from tests.fakes.server import serve_on_loopback
from tests.governance.oidc_helpers import FakeIdp, public_jwk, url_issuer

# -- databases and the audit log -----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keel.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    found = Database(database_url)
    found.migrate()
    yield found
    found.dispose()


@pytest.fixture
async def audit(database: Database) -> AsyncIterator[AuditLog]:
    log = AuditLog(database, flush_interval_s=0.01)
    await log.start()
    yield log
    await log.stop()


# -- OIDC ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rotated_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


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


@pytest.fixture
async def verifier(idp: FakeIdp, jwks_url: str) -> AsyncIterator[OidcVerifier]:
    verifier = OidcVerifier([url_issuer(jwks_url)])
    await verifier.start()
    yield verifier
    await verifier.aclose()
