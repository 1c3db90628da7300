"""Running one request against a group: choose, call, retry, fail over, give up honestly.

The rules, in order of precedence:
- an error caused by the request itself (a 4xx other than 429) is raised at once, never retried;
- context window exceeded / content policy refusal go to the group's special fallback if set;
- a deployment failure (429, 5xx, timeouts, connection errors, unusable responses; which of
  these count is `retry.retry_on`) is reported to the deployment's circuit breaker, then the next
  attempt goes to an untried deployment at once, or — when every deployment was tried — to a
  retry after exponential backoff with full jitter; a deployment whose error `repeats` (a
  refused key, a model file that cannot load) is not tried again;
- a 429 is back-pressure, not failure: the deployment sits out its Retry-After without its
  circuit moving, the next attempt goes elsewhere, and when nothing else can serve, the request
  waits for it only up to `retry.rate_limit_wait_s`, else the 429 and its Retry-After go back;
- an exception that is not one of Keel's errors was raised by Keel's own code: a 500, never
  retried and never held against the deployment;
- `retry.max_attempts` per group and `retry.deadline_s` for the whole request bound the work;
- when the group is exhausted, its `fallbacks` are tried in order, each with its own retry policy,
  and theirs after them (transitively, each group once);
- if everything fails, the last error is raised (its class and status kept) with the list of
  what was tried appended to its message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import TypeVar

from keel.config import RetryableFailure
from keel.errors import (
    ContextWindowExceededError,
    InternalError,
    KeelError,
    RateLimitError,
    UpstreamAuthError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from keel.providers import Provider
from keel.routing.group import Deployment, ModelGroup

__all__ = ["Attempt", "AttemptTrace", "execute"]

T = TypeVar("T")
log = logging.getLogger("keel.routing")


@dataclass(slots=True)
class Attempt:
    """One attempt, timed with `time.perf_counter`, for the call's trace."""

    deployment: Deployment
    group: str
    outcome: str
    started: float
    ended: float
    error: KeelError | None = None


@dataclass
class AttemptTrace:
    """What happened on the way to an answer; the gateway turns it into headers and a record."""

    tried: list[tuple[str, str]] = field(default_factory=list)  # (deployment id, outcome)
    deployment: Deployment | None = None
    group: str | None = None  # the group of `deployment`: the requested one or a fallback
    timeline: list[Attempt] = field(default_factory=list)  # the same attempts, timed

    @property
    def attempts(self) -> int:
        return len(self.tried)

    def add(
        self, deployment: Deployment, outcome: str, started: float, error: KeelError | None = None
    ) -> None:
        self.tried.append((deployment.id, outcome))
        self.timeline.append(
            Attempt(deployment, self.group or "", outcome, started, time.perf_counter(), error)
        )

    def describe(self) -> str:
        return ", ".join(f"{deployment} ({outcome})" for deployment, outcome in self.tried)


def failure_kind(error: KeelError) -> RetryableFailure | None:
    """The retryable failure an error is, or None when the request itself is at fault."""
    if isinstance(error, RateLimitError):
        return "rate_limit"
    if isinstance(error, UpstreamTimeoutError):
        return "timeout"
    if isinstance(error, UpstreamUnavailableError):
        return "unavailable"
    if isinstance(error, UpstreamConnectionError):
        return "connection"
    if isinstance(error, UpstreamBadResponseError):
        return "bad_response"
    if isinstance(error, UpstreamAuthError):
        return "auth"
    if isinstance(error, UpstreamError):
        return "server_error"
    return None


async def execute(
    group: ModelGroup,
    invoke: Callable[[Provider], Awaitable[T]],
    resolve: Callable[[str], ModelGroup],
    trace: AttemptTrace,
    *,
    hold: bool = False,
    regions: frozenset[str] | None = None,
    enter_fallback: Callable[[ModelGroup], Awaitable[None]] | None = None,
) -> T:
    """Run `invoke` on the group's deployments until one answers. With `hold`, the answering
    deployment keeps the request counted in flight until `stream_ended` is reported.
    `enter_fallback` runs before a fallback group is tried; a KeelError from it (a quota of
    that model, say) skips the group like one with nothing to offer."""
    deadline = time.monotonic() + group.retry.deadline_s
    queue = [group.id]
    visited: set[str] = set()
    last_error: KeelError | None = None
    while queue:
        target = queue.pop(0)
        if target in visited:
            continue
        visited.add(target)
        current = group if target == group.id else resolve(target)
        if current is not group and enter_fallback is not None:
            try:
                await enter_fallback(current)
            except KeelError as refused:
                last_error = refused
                continue
        trace.group = current.id
        try:
            return await _run_group(current, invoke, trace, deadline, hold, regions)
        except _Redirect as redirect:
            last_error = redirect.error
            queue = [redirect.target]
        except _Exhausted as exhausted:
            # A group with nothing to offer must not hide the error that got us here.
            last_error = exhausted.error or last_error
            # Fallbacks are followed transitively, breadth first: the same groups
            # `Router.chain` screens a request for are the ones it may end up on.
            queue.extend(current.fallbacks)
        if time.monotonic() >= deadline:
            break
    if last_error is None:
        last_error = UpstreamUnavailableError(f"no deployment of {group.id!r} is available")
    if trace.tried:
        last_error.message = f"{last_error.message} — tried: {trace.describe()}"
    raise last_error


class _Exhausted(Exception):
    def __init__(self, error: KeelError | None) -> None:
        self.error = error


class _Redirect(Exception):
    def __init__(self, target: str, error: KeelError) -> None:
        self.target = target
        self.error = error


async def _run_group(
    group: ModelGroup,
    invoke: Callable[[Provider], Awaitable[T]],
    trace: AttemptTrace,
    deadline: float,
    hold: bool,
    regions: frozenset[str] | None,
) -> T:
    tried: list[str] = []
    # Out-of-region deployments never run; one whose error `repeats` is not tried again.
    out_of_use: set[str] = _outside(group, regions)
    last_error: KeelError | None = None
    for attempt in range(group.retry.max_attempts):
        waited = False
        deployment = group.choose(tried, exclude=out_of_use)
        if deployment is None:
            deployment = await _wait_for_rate_limit(group, deadline, out_of_use)
            if deployment is None:
                break
            waited = True
        if deployment.id in tried and not waited:
            await _backoff(group, attempt, deadline)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        tried.append(deployment.id)
        trace.deployment = deployment
        probe = deployment.health.started()
        started = time.monotonic()
        clock = time.perf_counter()
        try:
            async with asyncio.timeout(remaining):
                result = await invoke(deployment.provider)
        except TimeoutError:
            error: KeelError = UpstreamTimeoutError(
                f"the request deadline of {group.retry.deadline_s:g}s passed"
            )
            deployment.health.failed("deadline", probe=probe)
            trace.add(deployment, "deadline", clock, error)
            raise _Exhausted(error) from None
        except KeelError as exc:
            kind = failure_kind(exc)
            trace.add(deployment, kind or f"HTTP {exc.status_code}", clock, exc)
            if kind is None:
                # The request's own fault (or Keel's): the deployment did nothing wrong.
                deployment.health.released(probe=probe)
                target = _special_fallback(group, exc)
                if target is not None:
                    raise _Redirect(target, exc) from None
                raise
            if kind == "rate_limit":
                deployment.health.rate_limited(_retry_after(exc), probe=probe)
            else:
                deployment.health.failed(kind, retry_after_s=_retry_after(exc), probe=probe)
            if exc.repeats:
                out_of_use.add(deployment.id)
            last_error = exc
            if kind not in group.retry.retry_on:
                raise _Exhausted(exc) from None
            continue
        except Exception as exc:
            # Providers translate everything an upstream can do into Keel's errors at the HTTP
            # seam; anything else was raised by Keel's own adapter code. That is Keel's bug, to
            # be logged and answered as such, never a health event for the deployment.
            deployment.health.released(probe=probe)
            trace.add(deployment, "internal_error", clock)
            log.exception("Keel's adapter for deployment %s failed", deployment.id)
            raise InternalError(
                f"Keel failed to handle the request for deployment {deployment.id!r} "
                f"({type(exc).__name__})"
            ) from None
        except BaseException:
            # Cancelled: the client went away, or the server is stopping.
            deployment.health.released(probe=probe)
            trace.add(deployment, "cancelled", clock)
            raise
        deployment.health.succeeded(time.monotonic() - started, probe=probe, release=not hold)
        trace.add(deployment, "ok", clock)
        return result
    raise _Exhausted(last_error or _all_rate_limited(group, out_of_use))


def _outside(group: ModelGroup, regions: frozenset[str] | None) -> set[str]:
    if regions is None:
        return set()
    return {d.id for d in group.deployments if not d.in_region(regions)}


def _special_fallback(group: ModelGroup, error: KeelError) -> str | None:
    if isinstance(error, ContextWindowExceededError):
        return group.context_window_fallback
    if error.code == "content_policy_violation":
        return group.content_policy_fallback
    return None


def _retry_after(error: KeelError) -> float | None:
    value = error.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date; the circuit breaker's cooldown covers it


async def _backoff(group: ModelGroup, attempt: int, deadline: float) -> None:
    ceiling = min(group.retry.backoff_max_s, group.retry.backoff_initial_s * 2**attempt)
    delay = random.uniform(0, ceiling)
    await asyncio.sleep(max(min(delay, deadline - time.monotonic()), 0))


async def _wait_for_rate_limit(
    group: ModelGroup, deadline: float, exclude: Collection[str]
) -> Deployment | None:
    """When every deployment is only rate limited, wait for the first Retry-After to pass if
    that is within `retry.rate_limit_wait_s` and the deadline; then that deployment is tried,
    whatever else happened meanwhile (the retry waited for is always made)."""
    soonest = _soonest_rate_limited(group, exclude)
    if soonest is None:
        return None
    delay = soonest.health.rate_limited_until - time.monotonic()
    if delay > group.retry.rate_limit_wait_s or delay > deadline - time.monotonic():
        return None
    await asyncio.sleep(max(delay, 0))
    return None if soonest.health.state == "open" else soonest


def _soonest_rate_limited(group: ModelGroup, exclude: Collection[str]) -> Deployment | None:
    now = time.monotonic()
    waiting = [
        d
        for d in group.deployments
        if d.id not in exclude and d.health.state != "open" and d.health.rate_limited_until > now
    ]
    return min(waiting, key=lambda d: d.health.rate_limited_until) if waiting else None


def _all_rate_limited(group: ModelGroup, exclude: Collection[str]) -> KeelError | None:
    """The 429 for a group whose deployments all asked for quiet before this request came."""
    soonest = _soonest_rate_limited(group, exclude)
    if soonest is None:
        return None
    wait_s = max(math.ceil(soonest.health.rate_limited_until - time.monotonic()), 1)
    return RateLimitError(
        f"every deployment of {group.id!r} is rate limited by its upstream",
        headers={"retry-after": str(wait_s)},
    )
