"""OIDC bearer tokens: verify a JWT from a configured identity provider and turn it into an Actor.

Each issuer's signing keys (its JWKS) come from a URL or a file and are held in memory, so a
request costs no network: only the signature check and the claim checks. Keys are refreshed in
the background once they are `jwks_cache_s` old, and a token naming a key id that the JWKS does
not hold triggers one early refetch (at most every 30 s per issuer) to follow key rotation
without letting random key ids turn into a flood of fetches. A verified token is remembered
(by its SHA-256) for up to a minute, never past its `exp`, so a client's repeated requests skip
the signature check; a JWKS change that drops a key forgets them all.

An actor from a token is named `oidc:<claim value>`: Keel's own user names hold no colon, so
a token can never pass for a Keel user where names are compared (cache scopes, request-record
visibility, usage). Its `principal_id` is `oidc:` and 16 hex digits of SHA-256 over the issuer
and the claim value, so the same subject at two issuers stays two principals.

Every refusal is an `AuthenticationError` with a short fixed reason. Nothing taken from the
token, not even its unverified claims, goes into a message or a log line: tokens are
credentials, and the claims of a forged one are attacker-chosen text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import jwt

from keel.errors import AuthenticationError, ConfigError
from keel.governance.config import OidcIssuerConfig
from keel.identity import ROLES, Actor

__all__ = ["OidcVerifier"]

log = logging.getLogger("keel.governance.oidc")

# Clocks drift between the identity provider and the replicas.
_LEEWAY_S = 30.0
# An unknown key id refetches the JWKS at most this often per issuer.
_REFETCH_INTERVAL_S = 30.0
# With no keys at all (the provider was down at start), requests retry the fetch this often.
_RETRY_AFTER_FAILURE_S = 5.0
# Real tokens with many group claims reach a few KB; anything far beyond is not worth parsing.
_MAX_TOKEN_CHARS = 16_384
_MAX_JWKS_BYTES = 1 << 20
# Of a claim value; the actor's name adds the prefix, which no Keel user name can start with.
_MAX_NAME_CHARS = 123  # with the "oidc:" prefix, a name fits the 128-character columns
_NAME_PREFIX = "oidc:"
# Verified tokens are remembered this long at most (and never past their `exp`): a signature
# check costs ~115-150 µs of event-loop time (RS256 / ES256), a hit ~5 µs.
_RESULT_TTL_S = 60.0
_RESULT_CACHE_SIZE = 4096

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Which JWK key type each asymmetric algorithm family verifies with.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def _key_type_for(alg: str) -> str | None:
    return _KEY_TYPES.get(alg[:2])


def _refuse(reason: str) -> NoReturn:
    # `from None`: a PyJWT exception being handled may quote the token; keep it out of tracebacks.
    raise AuthenticationError(reason, code="invalid_token") from None


class _JwksUnavailable(Exception):
    """A JWKS could not be fetched or held no usable key. The message names only config."""


@dataclass(slots=True)
class _KeySet:
    """One fetched JWKS: its signature keys, and the PyJWT keys built from them on first use."""

    keys: list[dict[str, Any]]
    by_kid: dict[str, list[int]] = field(default_factory=dict)
    prepared: dict[tuple[int, str], jwt.PyJWK] = field(default_factory=dict)

    @classmethod
    def from_document(cls, document: Any) -> _KeySet:
        raw = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(raw, list):
            raise _JwksUnavailable("the document has no `keys` list")
        keys = [
            key
            for key in raw
            if isinstance(key, dict)
            and key.get("kty") in ("RSA", "EC", "OKP")
            and key.get("use", "sig") == "sig"
        ]
        if not keys:
            raise _JwksUnavailable("the document holds no asymmetric signature keys")
        found = cls(keys)
        for index, key in enumerate(keys):
            kid = key.get("kid")
            if isinstance(kid, str):
                found.by_kid.setdefault(kid, []).append(index)
        return found

    def candidates(self, kid: str | None, alg: str) -> list[int]:
        indices = self.by_kid.get(kid, []) if kid is not None else range(len(self.keys))
        return [
            i
            for i in indices
            if self.keys[i].get("kty") == _key_type_for(alg) and self.keys[i].get("alg", alg) == alg
        ]

    def prepare(self, index: int, alg: str) -> jwt.PyJWK:
        # Built for the token's algorithm, so an RSA key published without `alg` serves PS256
        # as well as RS256; the algorithm itself was checked against the issuer's list already.
        prepared = self.prepared.get((index, alg))
        if prepared is None:
            prepared = jwt.PyJWK(self.keys[index], alg)
            self.prepared[(index, alg)] = prepared
        return prepared


class _Issuer:
    """One configured issuer and the bookkeeping of its JWKS fetches (monotonic times)."""

    def __init__(self, config: OidcIssuerConfig) -> None:
        self.config = config
        # Re-checked here, not only in the config model, so HS* or `none` can never verify.
        self.algorithms = frozenset(a for a in config.algorithms if _key_type_for(a) is not None)
        self.keys: _KeySet | None = None
        self.fetched_at = -math.inf
        self.attempted_at = -math.inf
        self.refetched_at = -math.inf
        self.warned_at = -math.inf
        # The fetch under way, shared by every request that needs it; it returns its failure.
        self.fetch: asyncio.Task[_JwksUnavailable | None] | None = None

    @property
    def source(self) -> str:
        return self.config.jwks_url or str(self.config.jwks_file)

    @property
    def fetching(self) -> bool:
        return self.fetch is not None and not self.fetch.done()

    def may_retry(self, now: float) -> bool:
        # After a failed fetch, wait a little: a provider that is down must not see a fetch
        # per request.
        return (
            self.fetched_at >= self.attempted_at
            or now - self.attempted_at >= _RETRY_AFTER_FAILURE_S
        )


class OidcVerifier:
    """Verifies OIDC JWT bearer tokens against the configured issuers."""

    def __init__(
        self,
        issuers: Sequence[OidcIssuerConfig],
        *,
        jwks_cache_s: float = 300.0,
        fetch_timeout_s: float = 5.0,
    ) -> None:
        self._issuers: dict[str, _Issuer] = {}
        for config in issuers:
            if config.issuer in self._issuers:
                raise ConfigError(f"auth.oidc: issuer {config.issuer!r} is configured twice")
            self._issuers[config.issuer] = _Issuer(config)
        self._jwks_cache_s = jwks_cache_s
        self._fetch_timeout_s = fetch_timeout_s
        self._http: aiohttp.ClientSession | None = None
        # SHA-256 of a verified token -> (the actor, with no source IP; wall-clock expiry).
        self._verified: OrderedDict[bytes, tuple[Actor, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return bool(self._issuers)

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Three base64url segments: worth trying as a JWT. Keel API keys have no dots."""
        return len(token) <= _MAX_TOKEN_CHARS and _JWT_SHAPE.fullmatch(token) is not None

    async def start(self) -> None:
        """Load every issuer's keys. A URL that fails is logged and retried on demand; a file
        that fails is a configuration error."""
        issuers = list(self._issuers.values())
        for issuer in issuers:
            if issuer.config.audience is None:
                log.warning(
                    "OIDC issuer %s has no audience configured: tokens it issued for other "
                    "applications are accepted too",
                    issuer.config.issuer,
                )
        failures = await asyncio.gather(*(self._start_fetch(issuer) for issuer in issuers))
        for issuer, failure in zip(issuers, failures, strict=True):
            if failure is not None and issuer.config.jwks_file is not None:
                raise ConfigError(
                    f"auth.oidc: issuer {issuer.config.issuer!r}: jwks_file "
                    f"{issuer.config.jwks_file}: {failure}; point jwks_file at the issuer's "
                    "JWKS document (its public signing keys)"
                )

    async def aclose(self) -> None:
        for issuer in self._issuers.values():
            if issuer.fetch is not None:
                issuer.fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await issuer.fetch
                issuer.fetch = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def verify(self, token: str, *, source_ip: str | None = None) -> Actor:
        if not self.looks_like_jwt(token):
            _refuse("malformed token")
        digest = hashlib.sha256(token.encode()).digest()
        remembered = self._verified.get(digest)
        if remembered is not None:
            actor, expires_at = remembered
            if time.time() < expires_at:
                self._verified.move_to_end(digest)
                return replace(actor, source_ip=source_ip)
            del self._verified[digest]

        try:
            # Unverified, only to pick the issuer and key; one parse gives header and claims.
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
            header, payload = unverified["header"], unverified["payload"]
        except Exception:
            _refuse("malformed token")
        claimed = payload.get("iss") if isinstance(payload, dict) else None
        issuer = self._issuers.get(claimed) if isinstance(claimed, str) else None
        if issuer is None:
            _refuse("token issuer is not trusted")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            _refuse("token algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            _refuse("malformed token")

        key = await self._signing_key(issuer, kid, alg)
        claims = self._decode(token, key, alg, issuer.config)
        actor = _actor_from(claims, issuer.config)
        self._remember(digest, actor, claims)
        return replace(actor, source_ip=source_ip)

    # -- keys -------------------------------------------------------------------------------

    async def _signing_key(self, issuer: _Issuer, kid: str | None, alg: str) -> jwt.PyJWK:
        now = time.monotonic()
        if issuer.keys is None:
            if issuer.fetching or issuer.may_retry(now):
                await asyncio.shield(self._start_fetch(issuer))
        elif (
            now - issuer.fetched_at >= self._jwks_cache_s
            and not issuer.fetching
            and issuer.may_retry(now)
        ):
            self._start_fetch(issuer)  # in the background: the current keys serve meanwhile
        keys = issuer.keys
        if keys is None:
            _refuse("token signing keys are unavailable")

        if kid is not None and kid not in keys.by_kid:
            # Perhaps the provider rotated its keys since the last fetch. A fetch under way
            # answers that for free; otherwise one refetch per interval.
            if issuer.fetching or now - issuer.refetched_at >= _REFETCH_INTERVAL_S:
                if not issuer.fetching:
                    issuer.refetched_at = now
                # Shielded: a client that goes away must not cancel the fetch others wait on.
                await asyncio.shield(self._start_fetch(issuer))
                keys = issuer.keys or keys
            if kid not in keys.by_kid:
                _refuse("token signing key is not known")

        candidates = keys.candidates(kid, alg)
        if not candidates:
            if kid is None:
                _refuse("token signing key is not known")
            _refuse("token algorithm does not match its signing key")
        if len(candidates) > 1:
            # Trying each would let one token cost many signature checks.
            _refuse("token has no key id" if kid is None else "token key id is ambiguous")
        try:
            return keys.prepare(candidates[0], alg)
        except jwt.PyJWTError:
            _refuse("token signing key is not usable")

    def _start_fetch(self, issuer: _Issuer) -> asyncio.Task[_JwksUnavailable | None]:
        """The issuer's fetch under way, or a new one."""
        if issuer.fetch is None or issuer.fetch.done():
            issuer.attempted_at = time.monotonic()
            issuer.fetch = asyncio.create_task(self._load(issuer))
        return issuer.fetch

    async def _load(self, issuer: _Issuer) -> _JwksUnavailable | None:
        try:
            keys = _KeySet.from_document(await self._fetch(issuer.config))
        except _JwksUnavailable as exc:
            now = time.monotonic()
            if now - issuer.warned_at >= 60.0:  # a provider that stays down: a line a minute
                issuer.warned_at = now
                log.warning(
                    "OIDC issuer %s: could not load keys from %s: %s",
                    issuer.config.issuer,
                    issuer.source,
                    exc,
                )
            return exc
        if issuer.keys is not None and issuer.keys.keys != keys.keys:
            # A key may have been withdrawn: tokens it signed must be checked again.
            self._verified.clear()
        issuer.keys = keys
        issuer.fetched_at = time.monotonic()
        return None

    async def _fetch(self, config: OidcIssuerConfig) -> Any:
        try:
            if config.jwks_file is not None:
                return json.loads(await asyncio.to_thread(_read_small, config.jwks_file))
            assert config.jwks_url is not None
            return json.loads(await self._get(config.jwks_url))
        except _JwksUnavailable:
            raise
        except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
            raise _JwksUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _get(self, url: str) -> bytes:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._fetch_timeout_s)
            )
        async with self._http.get(url, headers={"Accept": "application/json"}) as response:
            if response.status != 200:
                raise _JwksUnavailable(f"HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise _JwksUnavailable("the document is larger than 1 MiB")
            return bytes(body)

    # -- claims -----------------------------------------------------------------------------

    def _decode(
        self, token: str, key: jwt.PyJWK, alg: str, config: OidcIssuerConfig
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                leeway=_LEEWAY_S,
                options={
                    "require": ["exp", "iss"],
                    "verify_aud": config.audience is not None,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.ExpiredSignatureError:
            _refuse("token expired")
        except jwt.ImmatureSignatureError:
            _refuse("token is not yet valid")
        except jwt.InvalidAudienceError:
            _refuse("token audience is not accepted")
        except jwt.InvalidIssuerError:
            _refuse("token issuer is not trusted")
        except jwt.InvalidSignatureError:
            _refuse("token signature is invalid")
        except jwt.MissingRequiredClaimError as exc:
            # The claim name comes from our own list (exp, iss, aud), not from the token.
            _refuse(f"token is missing the {exc.claim} claim")
        except jwt.InvalidKeyError:
            _refuse("token signing key is not usable")
        except jwt.InvalidAlgorithmError:
            _refuse("token algorithm is not accepted")
        except jwt.DecodeError:
            _refuse("malformed token")
        except Exception:
            _refuse("token is invalid")
        return claims

    def _remember(self, digest: bytes, actor: Actor, claims: dict[str, Any]) -> None:
        expires_at = min(float(claims["exp"]), time.time() + _RESULT_TTL_S)
        if expires_at <= time.time():
            return
        self._verified[digest] = (actor, expires_at)
        self._verified.move_to_end(digest)
        while len(self._verified) > _RESULT_CACHE_SIZE:
            self._verified.popitem(last=False)


def _read_small(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(_MAX_JWKS_BYTES + 1)
    if len(data) > _MAX_JWKS_BYTES:
        raise _JwksUnavailable("the document is larger than 1 MiB")
    return data


def _name(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= _MAX_NAME_CHARS and value.isprintable():
        return value
    return None


def _principal_id(issuer: str, user: str) -> str:
    digest = hashlib.sha256(f"{issuer}\n{user}".encode()).hexdigest()
    return f"{_NAME_PREFIX}{digest[:16]}"


def _actor_from(claims: dict[str, Any], config: OidcIssuerConfig) -> Actor:
    user = _name(claims.get(config.user_claim))
    if user is None:
        _refuse(f"token has no usable {config.user_claim} claim")
    team: str | None = None
    if config.team_claim is not None:
        raw_team = claims.get(config.team_claim)
        if raw_team is not None and raw_team != "":
            team = _name(raw_team)
            if team is None:
                _refuse(f"token has no usable {config.team_claim} claim")
    raw_roles = claims.get(config.role_claim)
    named = [raw_roles] if isinstance(raw_roles, str) else raw_roles
    roles = (
        frozenset(r for r in named if isinstance(r, str) and r in ROLES)
        if isinstance(named, list)
        else frozenset()
    )
    return Actor(
        name=f"{_NAME_PREFIX}{user}",
        principal_id=_principal_id(config.issuer, user),
        roles=roles or frozenset({config.default_role}),
        kind="oidc",
        team=team,
        environment=config.environment,
    )
