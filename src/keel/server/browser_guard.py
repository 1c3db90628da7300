"""What keeps a web page from using Keel through the browser of the person running it.

A browser lets any page send requests to any address, the user's own loopback included; what
it withholds is the answer, unless the server allows the page's origin (CORS). Open mode (a
loopback bind without credentials, every caller the local admin) is therefore reachable from a
web page in three ways, each closed here, in pure ASGI with no per-request objects:

- DNS rebinding: the page's own host name is made to resolve to 127.0.0.1, so its requests are
  same-origin and their answers readable. They still name the page's host in `Host`:
  `HostCheck` accepts only loopback names in open mode (`server.allowed_hosts` too, when set).
- "Simple" cross-site requests, sent without asking the server first: a POST whose body is
  `text/plain`, a form, or has no declared type at all. `JsonBodiesOnly` refuses every body
  that is not declared JSON (415), so every request that writes needs a CORS preflight, which
  Keel does not grant unless `server.cors_allow_origins` lists the origin.
- A POST with no body at all (revoke a key, approve a promotion) is a simple request too, and
  its answer is never needed to do harm. Browsers name the page in `Origin` on every such
  request, so in open mode `HostCheck` refuses an `Origin` that is not a loopback origin or one
  of `server.cors_allow_origins`.

Where authentication is required a page has no credential to send (Keel uses no cookies), so
only the content-type rule and the configured host list apply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from keel.config import Settings
from keel.errors import ConfigError, KeelError, PermissionDeniedError, UnsupportedMediaTypeError
from keel.governance.access import auth_required
from keel.server.errors import error_response

__all__ = ["HostCheck", "JsonBodiesOnly", "guard_browsers", "is_loopback_name"]

# Keel's response headers a page allowed by CORS may read (docs/api.md lists them).
_EXPOSED_HEADERS = (
    "x-keel-request-id",
    "x-keel-deployment",
    "x-keel-attempts",
    "x-keel-cache",
    "x-keel-cache-guard",
    "x-keel-registry-version",
    "x-keel-guardrail-warnings",
    "x-keel-cost-usd",
    "x-keel-overhead-ms",
    "retry-after",
)
# Liveness and readiness probes: an orchestrator addresses them by the pod's IP, which no host
# list names. They disclose nothing a caller could use.
_PROBES = frozenset({"/healthz", "/readyz"})
_LOOPBACK_NAMES = frozenset({"localhost", "[::1]"})
# Decisions per raw header value: a client sends the same Host on every request, so the check
# is one dict lookup. Bounded, since the values are the client's to choose.
_MEMO_SIZE = 256


def guard_browsers(app: FastAPI, settings: Settings) -> None:
    """Add the host and origin check (only where it has something to check) and, where origins
    are listed, CORS around it, so that its refusals carry the CORS headers an allowed page
    needs to read them. `add_middleware` wraps what was added before: call this after adding
    the middleware these should run before."""
    server = settings.server
    open_mode = not auth_required(settings.auth, server.host)
    if open_mode and "*" in server.cors_allow_origins:
        raise ConfigError(
            "server.cors_allow_origins: '*' would let every web page use Keel as the local "
            "admin; list the origins, or require authentication"
        )
    if open_mode or server.allowed_hosts:
        app.add_middleware(
            HostCheck,
            open_mode=open_mode,
            allowed_hosts=server.allowed_hosts,
            cors_allow_origins=server.cors_allow_origins,
        )
    if server.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=server.cors_allow_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            # Any request header: the origin is trusted, and SDKs add their own headers.
            allow_headers=["*"],
            expose_headers=list(_EXPOSED_HEADERS),
        )


def is_loopback_name(host: str) -> bool:
    """`host` (lower case, no port) names this machine whatever DNS says: `localhost`,
    `*.localhost`, 127.0.0.0/8 or [::1]. Browsers resolve `*.localhost` to loopback themselves,
    so no page can rebind those names."""
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(authority: str) -> str:
    """A `Host` value without its port and trailing dot, in lower case: `[::1]:8080` -> `[::1]`,
    `Example.COM.:443` -> `example.com`."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        end = authority.find("]")
        return authority if end < 0 else authority[: end + 1]
    return authority.partition(":")[0].removesuffix(".")


class _HostNames:
    """Which host names a request may address: loopback names always, plus the configured ones
    (`*.example.com` for any subdomain); None accepts any."""

    def __init__(self, allowed: Iterable[str] | None) -> None:
        self.any = allowed is None
        names = list(allowed or ())
        self.exact = frozenset(name for name in names if not name.startswith("*."))
        self.suffixes = tuple(name[1:] for name in names if name.startswith("*."))
        self._memo: dict[bytes, bool] = {}

    def allows(self, raw: bytes) -> bool:
        found = self._memo.get(raw)
        if found is None:
            found = self._decide(_host_name(raw.decode("latin-1")))
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[raw] = found
        return found

    def _decide(self, name: str) -> bool:
        return (
            self.any
            or name in self.exact
            or (bool(self.suffixes) and name.endswith(self.suffixes))
            or is_loopback_name(name)
        )


class HostCheck:
    """Refuses, before authentication, a request addressed to a host name this server does not
    answer to, and in open mode one sent by a web page of another origin. Neither is audited:
    neither names anyone, and both come before any credential is looked at."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        open_mode: bool,
        allowed_hosts: list[str],
        cors_allow_origins: list[str],
    ) -> None:
        self.app = app
        self.open_mode = open_mode
        check_hosts = open_mode or bool(allowed_hosts)
        self.hosts = _HostNames(allowed_hosts if check_hosts else None)
        self.check_hosts = check_hosts
        self.exempt: frozenset[str] = frozenset() if open_mode else _PROBES
        self.origins = _HostNames([])
        self.listed_origins = frozenset(origin.encode("latin-1") for origin in cors_allow_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> KeelError | None:
        host: bytes | None = None
        origin: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
        # No Host at all is not a browser (every browser sends one), and there is no name to
        # have been rebound.
        if (
            self.check_hosts
            and host is not None
            and scope["path"] not in self.exempt
            and not self.hosts.allows(host)
        ):
            return PermissionDeniedError(
                "this server does not answer to the host name in the Host header; "
                "address it by a name in server.allowed_hosts (or a loopback name)",
                code="host_not_allowed",
            )
        if self.open_mode and origin is not None and not self._origin_allowed(origin):
            return PermissionDeniedError(
                "requests from web pages of other origins are refused while Keel runs without "
                "authentication; list the origin in server.cors_allow_origins to allow it",
                code="origin_not_allowed",
            )
        return None

    def _origin_allowed(self, origin: bytes) -> bool:
        if origin in self.listed_origins:
            return True
        # `scheme://host[:port]`; "null" (a sandboxed frame, a file, a page that hides its
        # referrer) has no host and is refused.
        _, separator, authority = origin.partition(b"://")
        return bool(separator) and self.origins.allows(authority)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_JSON = b"application/json"
# Routes that also take another media type. Model cards may be YAML; a YAML type is never a
# "simple" request, so a browser still has to ask first.
_YAML = frozenset({b"application/yaml", b"application/x-yaml", b"text/yaml", b"text/x-yaml"})
_CARD_ROUTES = "/v1/keel/registry/models"


def _takes_yaml(path: str) -> bool:
    return path == _CARD_ROUTES or (
        path.startswith(_CARD_ROUTES + "/") and path.endswith("/versions")
    )


class JsonBodiesOnly:
    """Refuses (415) a request that declares a media type other than JSON, or sends a body
    without declaring one. A request with no body and no content-type, such as a bare POST
    action, goes through. Runs after authentication, so a caller without a credential learns
    nothing from it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS:
            refusal = _media_type_refusal(scope)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _media_type_refusal(scope: Scope) -> UnsupportedMediaTypeError | None:
    content_type: bytes | None = None
    has_body = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            has_body = has_body or value.strip() not in (b"0", b"")
        elif name == b"transfer-encoding":
            has_body = True
    if content_type is None:
        if not has_body:
            return None
        return UnsupportedMediaTypeError(
            "the request has a body but no content-type; send content-type: application/json"
        )
    media = content_type.partition(b";")[0].strip().lower()
    if media == _JSON or (media.startswith(b"application/") and media.endswith(b"+json")):
        return None
    if media in _YAML and _takes_yaml(scope["path"]):
        return None
    shown = media.decode("latin-1")[:100] or "(empty)"
    return UnsupportedMediaTypeError(
        f"content-type {shown} is not accepted; send content-type: application/json"
    )
