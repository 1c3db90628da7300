"""What routing knows about one deployment: its circuit, latency, load and capacity.

All state is in-process and touched only from the event loop, so no locks are needed. Each
replica keeps its own view; a replica learns a deployment is failing from its own traffic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from keel.config import CircuitPolicy

__all__ = ["CircuitState", "DeploymentHealth"]

CircuitState = Literal["closed", "open", "half_open"]
_MINUTE = 60.0


@dataclass
class DeploymentHealth:
    circuit: CircuitPolicy
    ewma_alpha: float = 0.3
    rpm: int | None = None
    tpm: int | None = None
    clock: Callable[[], float] = time.monotonic
    state: CircuitState = "closed"
    cooldown_until: float = 0.0
    rate_limited_until: float = 0.0
    probe_in_flight: bool = False
    in_flight: int = 0
    latency_s: float | None = None
    successes: int = 0
    failures_total: int = 0
    last_error: str | None = None
    _failures: deque[float] = field(default_factory=deque)
    _requests: deque[float] = field(default_factory=deque)
    _tokens: deque[tuple[float, int]] = field(default_factory=deque)

    # -- choosing --------------------------------------------------------------------------

    def available(self) -> bool:
        """Whether a request may be sent now (closed, or half-open with no probe out)."""
        now = self.clock()
        if self.state == "open":
            if now < self.cooldown_until:
                return False
            self.state = "half_open"
            self.probe_in_flight = False
        if now < self.rate_limited_until:
            return False
        if self.state == "half_open":
            return not self.probe_in_flight
        return True

    def saturated(self) -> bool:
        now = self.clock()
        self._expire(now)
        if self.rpm is not None and len(self._requests) >= self.rpm:
            return True
        return self.tpm is not None and sum(tokens for _, tokens in self._tokens) >= self.tpm

    # -- reporting -------------------------------------------------------------------------

    def started(self) -> bool:
        """Count a request in; True when it is the half-open circuit's one probe.

        The caller hands that flag back when the request ends, so only the probe itself can
        free the probe slot (an older request finishing meanwhile must not).
        """
        self.in_flight += 1
        self._requests.append(self.clock())
        if self.state == "half_open" and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def succeeded(self, latency_s: float, *, probe: bool = False, release: bool = True) -> None:
        """The deployment answered. `release=False` keeps the request counted in flight (a
        stream still being relayed); `stream_ended` releases it."""
        if release:
            self.in_flight -= 1
        self.successes += 1
        if self.latency_s is None:
            self.latency_s = latency_s
        else:
            self.latency_s += self.ewma_alpha * (latency_s - self.latency_s)
        if self.state != "closed":
            self.state = "closed"
            self._failures.clear()
        if probe:
            self.probe_in_flight = False

    def failed(
        self, reason: str, *, retry_after_s: float | None = None, probe: bool = False
    ) -> None:
        """A failure of the deployment (not of the request). Opens the circuit when due."""
        self.in_flight -= 1
        self.failures_total += 1
        self.last_error = reason
        now = self.clock()
        if retry_after_s:
            self.rate_limited_until = max(self.rate_limited_until, now + retry_after_s)
        self._failures.append(now)
        while self._failures and self._failures[0] < now - self.circuit.window_s:
            self._failures.popleft()
        if probe or len(self._failures) >= self.circuit.failure_threshold:
            self.state = "open"
            self.cooldown_until = max(self.cooldown_until, now + self.circuit.cooldown_s)
        if probe:
            self.probe_in_flight = False

    def rate_limited(self, retry_after_s: float | None, *, probe: bool = False) -> None:
        """The deployment asked for less traffic. That is back-pressure, not failure: it is
        kept out of rotation for its Retry-After, and its circuit is left as it was."""
        self.in_flight -= 1
        self.last_error = "rate_limit"
        if retry_after_s:
            self.rate_limited_until = max(self.rate_limited_until, self.clock() + retry_after_s)
        if probe:
            self.probe_in_flight = False

    def released(self, *, probe: bool = False) -> None:
        """The request ended without telling anything about the deployment's health."""
        self.in_flight -= 1
        if probe:
            self.probe_in_flight = False

    def stream_ended(self, failure: str | None, *, probe: bool = False) -> None:
        """A stream held by `succeeded(release=False)` finished, cleanly or not."""
        if failure is None:
            self.released(probe=probe)
        else:
            self.failed(failure, probe=probe)

    def used_tokens(self, tokens: int) -> None:
        if self.tpm is not None and tokens:
            self._tokens.append((self.clock(), tokens))

    def _expire(self, now: float) -> None:
        while self._requests and self._requests[0] < now - _MINUTE:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] < now - _MINUTE:
            self._tokens.popleft()

    def snapshot(self) -> dict[str, object]:
        now = self.clock()
        self.available()  # moves an expired open circuit to half-open
        return {
            "state": self.state,
            "cooldown_remaining_s": round(
                max(self.cooldown_until - now, self.rate_limited_until - now, 0.0), 3
            ),
            "in_flight": self.in_flight,
            "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000, 3),
            "successes": self.successes,
            "failures": self.failures_total,
            "recent_failures": len(self._failures),
            "saturated": self.saturated(),
            "last_error": self.last_error,
        }
