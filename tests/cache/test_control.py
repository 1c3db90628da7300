"""Per-request cache control and the cacheability rule."""

from __future__ import annotations

import pytest

from keel.cache import MAX_TTL_S, CacheControl, cache_control, is_cacheable
from keel.errors import InvalidRequestError
from tests.cache.helpers import chat


def test_nothing_given_is_the_default() -> None:
    assert cache_control(None, {}) == CacheControl()
    assert CacheControl().may_serve and CacheControl().may_store


def test_body_field() -> None:
    control = cache_control({"no_cache": True, "ttl": 60}, {})
    assert control == CacheControl(no_cache=True, no_store=False, ttl_s=60)
    assert not control.may_serve and control.may_store
    assert cache_control({"no_store": True}, {}).may_store is False


def test_header_directives_case_and_spacing() -> None:
    control = cache_control(None, {"X-Keel-Cache": " No-Store , ttl=120 "})
    assert control == CacheControl(no_store=True, ttl_s=120)
    assert cache_control(None, {"x-keel-cache": "no-cache"}).no_cache


def test_body_and_header_combine_and_the_body_ttl_wins() -> None:
    control = cache_control({"ttl": 30}, {"x-keel-cache": "no-cache, ttl=90"})
    assert control == CacheControl(no_cache=True, ttl_s=30)


def test_standard_cache_control_is_honoured_leniently() -> None:
    control = cache_control(None, {"Cache-Control": "no-cache, max-age=0"})
    assert control == CacheControl(no_cache=True)
    assert cache_control(None, {"cache-control": "no-store"}).no_store
    assert cache_control(None, {"cache-control": "max-age=0"}) == CacheControl()


@pytest.mark.parametrize(
    "body",
    [
        "yes",
        ["ttl", 5],
        {"ttl": 0},
        {"ttl": -5},
        {"ttl": MAX_TTL_S + 1},
        {"ttl": 1.5},
        {"ttl": "60"},
        {"ttl": True},
        {"no_cache": "true"},
        {"no_store": 1},
        {"bypass": True},
    ],
)
def test_bad_body_values_are_a_400_naming_cache(body: object) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        cache_control(body, {})
    assert caught.value.param == "cache"
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    "header", ["sometimes", "ttl", "ttl=", "ttl=abc", "ttl=-1", "ttl=0", "no-cache=1", "ttl=١٢"]
)
def test_bad_header_values_are_a_400_naming_cache(header: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        cache_control(None, {"x-keel-cache": header})
    assert caught.value.param == "cache"


def test_only_explicit_temperature_zero_is_cached_by_default() -> None:
    default = CacheControl()
    assert is_cacheable(chat(temperature=0), default, always=False)
    assert is_cacheable(chat(temperature=0.0, n=3, stream=True), default, always=False)
    assert not is_cacheable(chat(), default, always=False)
    assert not is_cacheable(chat(temperature=0.2), default, always=False)
    assert not is_cacheable(chat(seed=42), default, always=False)


def test_a_ttl_or_the_group_flag_opts_in() -> None:
    assert is_cacheable(chat(temperature=1), CacheControl(ttl_s=60), always=False)
    assert is_cacheable(chat(temperature=1), CacheControl(), always=True)


def test_no_cache_plus_no_store_leaves_nothing_to_do() -> None:
    both = CacheControl(no_cache=True, no_store=True)
    assert not is_cacheable(chat(temperature=0), both, always=True)
    assert is_cacheable(chat(temperature=0), CacheControl(no_cache=True), always=False)
    assert is_cacheable(chat(temperature=0), CacheControl(no_store=True), always=False)
