"""Per-request cache control, and the rule for which requests are cached at all.

A client steers the cache with the body field `cache` (`{"no_cache": bool, "no_store": bool,
"ttl": seconds}`) or the header `x-keel-cache` (comma-separated `no-cache`, `no-store`,
`ttl=SECONDS`). Both may be given: the flags of either apply, and the body's ttl wins. Bad values
are a 400 naming `cache`. The standard `Cache-Control` request header is honoured for `no-cache`
and `no-store` only, and its other directives are ignored rather than refused, because browsers
and proxies add them (`max-age=0`) without the client asking for anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from keel.errors import InvalidRequestError
from keel.schemas import ChatCompletionRequest

__all__ = ["CONTROL_HEADER", "MAX_TTL_S", "CacheControl", "cache_control", "is_cacheable"]

CONTROL_HEADER = "x-keel-cache"
MAX_TTL_S = 30 * 24 * 3600
_BODY_KEYS = ("no_cache", "no_store", "ttl")


@dataclass(frozen=True, slots=True)
class CacheControl:
    no_cache: bool = False  # answer from upstream, but the fresh answer may still be stored
    no_store: bool = False  # a cached answer may be served, but this one is not kept
    ttl_s: int | None = None  # an explicit TTL, which is also an explicit opt-in

    @property
    def may_serve(self) -> bool:
        return not self.no_cache

    @property
    def may_store(self) -> bool:
        return not self.no_store


def _invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="cache")


def _check_ttl(value: int) -> int:
    if not 1 <= value <= MAX_TTL_S:
        raise _invalid(f"cache ttl must be between 1 and {MAX_TTL_S} seconds, got {value}")
    return value


def _from_body(field: object) -> CacheControl:
    if not isinstance(field, Mapping):
        raise _invalid("cache must be an object with no_cache, no_store and ttl")
    unknown = sorted(str(key) for key in field if key not in _BODY_KEYS)
    if unknown:
        raise _invalid(f"unknown cache option(s): {', '.join(unknown)}")
    flags = {}
    for name in ("no_cache", "no_store"):
        value = field.get(name, False)
        if not isinstance(value, bool):
            raise _invalid(f"cache.{name} must be a boolean")
        flags[name] = value
    ttl = field.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)):
        raise _invalid("cache.ttl must be an integer number of seconds")
    return CacheControl(
        no_cache=flags["no_cache"],
        no_store=flags["no_store"],
        ttl_s=None if ttl is None else _check_ttl(ttl),
    )


def _directives(value: str) -> list[str]:
    return [part.strip().lower() for part in value.split(",") if part.strip()]


def _from_header(value: str) -> CacheControl:
    no_cache = no_store = False
    ttl: int | None = None
    for directive in _directives(value):
        name, has_value, argument = directive.partition("=")
        name = name.strip()
        if name == "no-cache" and not has_value:
            no_cache = True
        elif name == "no-store" and not has_value:
            no_store = True
        elif name == "ttl" and has_value:
            argument = argument.strip()
            if not argument.isascii() or not argument.isdigit():
                raise _invalid(f"{CONTROL_HEADER}: ttl must be a whole number of seconds")
            ttl = _check_ttl(int(argument))
        else:
            raise _invalid(
                f"{CONTROL_HEADER}: unknown directive {directive!r}; "
                "expected no-cache, no-store or ttl=SECONDS"
            )
    return CacheControl(no_cache=no_cache, no_store=no_store, ttl_s=ttl)


def cache_control(body_field: object, headers: Mapping[str, str]) -> CacheControl:
    """The cache control of one request, from its `cache` body field (None when absent) and its
    headers (any mapping; names are matched case-insensitively)."""
    own: str | None = None
    standard: str | None = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == CONTROL_HEADER:
            own = value
        elif lowered == "cache-control":
            standard = value
    body = CacheControl() if body_field is None else _from_body(body_field)
    header = CacheControl() if own is None else _from_header(own)
    no_cache = body.no_cache or header.no_cache
    no_store = body.no_store or header.no_store
    if standard is not None:
        directives = _directives(standard)
        no_cache = no_cache or "no-cache" in directives
        no_store = no_store or "no-store" in directives
    ttl = body.ttl_s if body.ttl_s is not None else header.ttl_s
    return CacheControl(no_cache=no_cache, no_store=no_store, ttl_s=ttl)


def is_cacheable(request: ChatCompletionRequest, control: CacheControl, always: bool) -> bool:
    """Whether the cache takes part in this request at all (see the package docstring).

    Cached: requests that set temperature to 0 explicitly, requests that opt in with a ttl, and
    every request of a group configured with `always`. Not cached: everything else, since a
    sampled answer replayed to every caller would turn randomness the client asked for into a
    constant; and requests that say both no-cache and no-store, for which there is nothing to do.
    """
    if control.no_cache and control.no_store:
        return False
    if always or control.ttl_s is not None:
        return True
    return "temperature" in request.model_fields_set and request.temperature == 0
