"""Choosing a deployment and keeping its health, with an injected clock and random source."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import pytest

from keel.config import CircuitPolicy, DeploymentConfig, RetryPolicy, Strategy
from keel.providers import Provider
from keel.routing import Deployment, ModelGroup
from keel.routing.health import DeploymentHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RemoteProvider(Provider):
    name: ClassVar[str] = "remote"


class LocalProvider(Provider):
    name: ClassVar[str] = "local"
    is_local: ClassVar[bool] = True


CIRCUIT = CircuitPolicy(failure_threshold=3, window_s=10.0, cooldown_s=5.0)


def deployment(
    deployment_id: str,
    clock: Clock,
    *,
    weight: float = 1.0,
    tier: int = 1,
    rpm: int | None = None,
    tpm: int | None = None,
    price: float | None = None,
    local: bool = False,
    ewma_alpha: float = 0.5,
) -> Deployment:
    config = DeploymentConfig(
        id=deployment_id, provider="openai", weight=weight, tier=tier, rpm=rpm, tpm=tpm
    )
    provider = (LocalProvider if local else RemoteProvider)(config, None)  # type: ignore[arg-type]
    health = DeploymentHealth(circuit=CIRCUIT, ewma_alpha=ewma_alpha, rpm=rpm, tpm=tpm, clock=clock)
    return Deployment(provider, health, price)


def group(
    deployments: list[Deployment],
    strategy: Strategy = "weighted",
    rand: Callable[[], float] = lambda: 0.0,
) -> ModelGroup:
    return ModelGroup(
        id="g",
        deployments=deployments,
        strategy=strategy,
        retry=RetryPolicy(),
        circuit=CIRCUIT,
        fallbacks=[],
        random=rand,
    )


def sequence(values: Iterable[float]) -> Callable[[], float]:
    iterator = iter(values)
    return lambda: next(iterator)


def open_circuit(target: Deployment) -> None:
    for _ in range(CIRCUIT.failure_threshold):
        target.health.started()
        target.health.failed("unavailable")
    assert target.health.state == "open"


def chosen(model_group: ModelGroup, tried: list[str] | None = None) -> str | None:
    picked = model_group.choose(tried or [])
    return None if picked is None else picked.id


# -- weighted --------------------------------------------------------------------------------


def test_weighted_follows_the_random_point_across_the_weights() -> None:
    clock = Clock()
    points = [0.0, 0.24, 0.26, 0.99]
    g = group(
        [deployment("a", clock, weight=1), deployment("b", clock, weight=3)],
        rand=sequence(points),
    )
    # total weight 4: [0, 1) is a, [1, 4) is b
    assert [chosen(g) for _ in points] == ["a", "a", "b", "b"]


def test_weighted_shares_traffic_in_proportion_to_weight() -> None:
    clock = Clock()
    seeded = random.Random(1234)
    g = group(
        [deployment("a", clock, weight=1), deployment("b", clock, weight=3)],
        rand=seeded.random,
    )
    picks = [chosen(g) for _ in range(4000)]
    assert 0.70 < picks.count("b") / len(picks) < 0.80


def test_untried_deployments_come_before_a_retry_and_a_retry_is_allowed() -> None:
    clock = Clock()
    g = group([deployment("a", clock), deployment("b", clock)], rand=lambda: 0.0)
    assert chosen(g) == "a"
    assert chosen(g, ["a"]) == "b"
    assert chosen(g, ["b"]) == "a"
    # everything tried and still healthy: a retry on one of them
    assert chosen(g, ["a", "b"]) == "a"


def test_an_open_circuit_is_never_chosen() -> None:
    clock = Clock()
    a, b = deployment("a", clock), deployment("b", clock)
    g = group([a, b], rand=lambda: 0.0)
    open_circuit(a)
    assert {chosen(g) for _ in range(5)} == {"b"}
    assert chosen(g, ["b"]) == "b"  # a retry on b, never a
    open_circuit(b)
    assert chosen(g) is None


# -- priority --------------------------------------------------------------------------------


def test_priority_uses_tier_two_only_when_tier_one_is_out() -> None:
    clock = Clock()
    a = deployment("a", clock, tier=1, rpm=1)
    b = deployment("b", clock, tier=1, rpm=1)
    c = deployment("c", clock, tier=2)
    g = group([c, a, b], strategy="priority", rand=sequence([0.0, 0.99] * 10))
    assert [chosen(g), chosen(g)] == ["a", "b"]  # weighted among tier 1

    # tier 1 tried (failed, circuit still closed): the untried tier 2 goes next
    assert chosen(g, ["a", "b"]) == "c"

    # tier 1 saturated: tier 2 takes the traffic
    a.health.started()
    a.health.succeeded(0.1)
    b.health.started()
    b.health.succeeded(0.1)
    assert a.health.saturated() and b.health.saturated()
    assert chosen(g) == "c"
    # everything saturated: back to tier 1
    c_full = deployment("c", clock, tier=2, rpm=1)
    c_full.health.started()
    c_full.health.succeeded(0.1)
    g_full = group([c_full, a, b], strategy="priority")
    assert chosen(g_full) == "a"

    # the minute passes: tier 1 is back
    clock.advance(61)
    assert chosen(g) == "a"

    # tier 1 unhealthy: tier 2 takes the traffic
    open_circuit(a)
    open_circuit(b)
    assert chosen(g) == "c"


def test_priority_with_one_tier_one_left_keeps_using_it() -> None:
    clock = Clock()
    a, b = deployment("a", clock, tier=1), deployment("b", clock, tier=1)
    c = deployment("c", clock, tier=2)
    g = group([a, b, c], strategy="priority", rand=lambda: 0.0)
    open_circuit(a)
    assert {chosen(g) for _ in range(5)} == {"b"}


# -- least_inflight, lowest_latency, lowest_cost -----------------------------------------------


def test_least_inflight_picks_the_least_loaded() -> None:
    clock = Clock()
    a, b, c = deployment("a", clock), deployment("b", clock), deployment("c", clock)
    g = group([a, b, c], strategy="least_inflight", rand=lambda: 0.0)
    a.health.started()
    a.health.started()
    b.health.started()
    assert chosen(g) == "c"
    c.health.started()
    c.health.started()
    assert chosen(g) == "b"
    b.health.succeeded(0.1)
    a.health.failed("timeout")
    # a: 1, b: 0, c: 2
    assert chosen(g) == "b"
    b.health.started()
    # a and b tie at 1: weighted among them
    g.random = lambda: 0.99
    assert chosen(g) == "b"
    g.random = lambda: 0.0
    assert chosen(g) == "a"


def test_lowest_latency_measures_unmeasured_first_then_follows_the_ewma() -> None:
    clock = Clock()
    a, b = deployment("a", clock, ewma_alpha=0.5), deployment("b", clock, ewma_alpha=0.5)
    g = group([a, b], strategy="lowest_latency", rand=lambda: 0.0)
    assert chosen(g) == "a"
    a.health.started()
    a.health.succeeded(0.2)
    assert chosen(g) == "b"  # b has no figure yet
    b.health.started()
    b.health.succeeded(0.4)
    assert chosen(g) == "a"
    # a slows down: 0.2 -> 0.2 + 0.5 * (1.0 - 0.2) = 0.6
    a.health.started()
    a.health.succeeded(1.0)
    assert a.health.latency_s == pytest.approx(0.6)
    assert chosen(g) == "b"
    # one fast answer moves it only part of the way: 0.6 + 0.5 * (0.0 - 0.6) = 0.3
    a.health.started()
    a.health.succeeded(0.0)
    assert a.health.latency_s == pytest.approx(0.3)
    assert chosen(g) == "a"
    assert a.health.snapshot()["latency_ms"] == pytest.approx(300.0)


def test_lowest_cost_puts_local_first_and_unknown_prices_last() -> None:
    clock = Clock()
    unknown = deployment("unknown", clock, price=None)
    pricey = deployment("pricey", clock, price=10.0)
    cheap = deployment("cheap", clock, price=0.5)
    local = deployment("local", clock, price=None, local=True)
    g = group([unknown, pricey, cheap, local], strategy="lowest_cost")
    assert chosen(g) == "local"
    assert chosen(g, ["local"]) == "cheap"
    assert chosen(g, ["local", "cheap"]) == "pricey"
    assert chosen(g, ["local", "cheap", "pricey"]) == "unknown"


# -- capacity --------------------------------------------------------------------------------


def test_rpm_saturation_moves_traffic_and_clears_after_a_minute() -> None:
    clock = Clock()
    a, b = deployment("a", clock, rpm=2), deployment("b", clock)
    g = group([a, b], rand=lambda: 0.0)
    for _ in range(2):
        assert chosen(g) == "a"
        a.health.started()
        a.health.succeeded(0.01)
    assert a.health.saturated()
    assert a.health.snapshot()["saturated"] is True
    assert chosen(g) == "b"
    # everything else tried: a saturated deployment is still better than nothing
    assert chosen(g, ["b"]) == "a"
    clock.advance(30)
    assert a.health.saturated()
    clock.advance(31)
    assert not a.health.saturated()
    assert chosen(g) == "a"


def test_tpm_saturation() -> None:
    clock = Clock()
    a, b = deployment("a", clock, tpm=100), deployment("b", clock)
    g = group([a, b], rand=lambda: 0.0)
    a.health.used_tokens(60)
    assert not a.health.saturated()
    a.health.used_tokens(40)
    assert a.health.saturated()
    assert chosen(g) == "b"
    clock.advance(61)
    assert chosen(g) == "a"


# -- circuit breaker -------------------------------------------------------------------------


def fail(health: DeploymentHealth, reason: str = "unavailable", **kwargs: Any) -> None:
    probe = health.started()
    health.failed(reason, probe=probe, **kwargs)


def test_circuit_opens_after_threshold_failures_inside_the_window() -> None:
    clock = Clock()
    health = deployment("a", clock).health
    fail(health)
    clock.advance(6)
    fail(health)
    assert health.state == "closed" and health.available()
    # the first failure leaves the 10 s window before the third arrives
    clock.advance(6)
    fail(health)
    assert health.state == "closed" and health.available()
    clock.advance(1)
    fail(health)
    assert health.state == "open"
    assert not health.available()
    assert health.snapshot()["state"] == "open"
    assert health.snapshot()["cooldown_remaining_s"] == pytest.approx(5.0)
    assert health.in_flight == 0


def test_half_open_lets_exactly_one_probe_through_and_closes_on_success() -> None:
    clock = Clock()
    health = deployment("a", clock).health
    for _ in range(3):
        fail(health)
    assert health.state == "open"
    clock.advance(4.9)
    assert not health.available()
    clock.advance(0.2)
    assert health.available()
    assert health.state == "half_open"
    health.started()  # the probe
    assert not health.available()
    assert not health.available()
    health.succeeded(0.05)
    assert health.state == "closed"
    assert health.available()
    assert health.snapshot()["recent_failures"] == 0
    # the slate is clean: it takes the full threshold again to open
    fail(health)
    fail(health)
    assert health.state == "closed"


def test_a_failed_probe_opens_the_circuit_again_for_another_cooldown() -> None:
    clock = Clock()
    a, b = deployment("a", clock), deployment("b", clock, tier=2)
    g = group([a, b], strategy="priority", rand=lambda: 0.0)
    for _ in range(3):
        fail(a.health)
    assert chosen(g) == "b"
    clock.advance(5.0)
    assert chosen(g) == "a"  # the probe
    a.health.started()
    assert chosen(g) == "b"  # while the probe is out, nobody else reaches a
    a.health.failed("unavailable")
    assert a.health.state == "open"
    assert chosen(g) == "b"
    clock.advance(4.0)
    assert chosen(g) == "b"
    clock.advance(1.0)
    assert chosen(g) == "a"
    probe = a.health.started()
    a.health.succeeded(0.01, probe=probe)
    assert a.health.state == "closed"
    assert chosen(g) == "a"


def test_a_released_probe_lets_another_probe_through() -> None:
    # A probe that ended because of the request (a 400, a cancelled client) says nothing about
    # the deployment: the circuit stays half-open and the next request may probe.
    clock = Clock()
    health = deployment("a", clock).health
    for _ in range(3):
        fail(health)
    clock.advance(5.0)
    assert health.available()
    probe = health.started()
    assert probe
    health.released(probe=probe)
    assert health.state == "half_open"
    assert health.available()


def test_a_request_older_than_the_probe_does_not_free_the_probe_slot() -> None:
    clock = Clock()
    health = deployment("a", clock).health
    health.started()  # a slow request, sent while the circuit was closed
    for _ in range(3):
        fail(health)
    clock.advance(5.0)
    assert health.available()
    health.started()  # the probe
    assert not health.available()
    health.released()  # the slow request ends (say the client went away)
    assert not health.available()  # the probe is still out


def test_retry_after_keeps_a_deployment_out_until_it_passes() -> None:
    clock = Clock()
    a, b = deployment("a", clock), deployment("b", clock)
    g = group([a, b], rand=lambda: 0.0)
    fail(a.health, "rate_limit", retry_after_s=2.0)
    assert a.health.state == "closed"
    assert not a.health.available()
    assert a.health.snapshot()["cooldown_remaining_s"] == pytest.approx(2.0)
    assert chosen(g) == "b"
    assert chosen(g, ["b"]) == "b"  # not even a retry goes to a
    clock.advance(1.5)
    assert chosen(g) == "b"
    clock.advance(0.5)
    assert a.health.available()
    assert chosen(g) == "a"

    # a later, shorter Retry-After does not shorten the wait
    c = deployment("c", clock).health
    fail(c, "rate_limit", retry_after_s=3.0)
    fail(c, "rate_limit", retry_after_s=1.0)
    clock.advance(2.0)
    assert not c.available()
    clock.advance(1.0)
    assert c.available()
    assert c.state == "closed"


def test_snapshot_reports_counts_and_load() -> None:
    clock = Clock()
    health = deployment("a", clock, rpm=10).health
    health.started()
    health.succeeded(0.25)
    fail(health, "timeout")
    health.started()
    snapshot = health.snapshot()
    assert snapshot == {
        "state": "closed",
        "cooldown_remaining_s": 0.0,
        "in_flight": 1,
        "latency_ms": 250.0,
        "successes": 1,
        "failures": 1,
        "recent_failures": 1,
        "saturated": False,
        "last_error": "timeout",
    }


def test_a_stream_ending_long_after_its_probe_answered_does_not_free_a_new_probe() -> None:
    clock = Clock()
    health = deployment("a", clock).health
    for _ in range(3):
        fail(health)
    clock.advance(5.0)
    assert health.available()
    old_probe = health.started()
    health.succeeded(0.01, probe=old_probe, release=False)  # first chunk: circuit closes
    for _ in range(3):
        fail(health)  # it fails again while the old stream is still being relayed
    clock.advance(5.0)
    assert health.available()
    assert health.started()  # the new probe
    health.stream_ended(None)  # the old stream ends cleanly
    assert not health.available()  # the new probe is still the only one out


def test_one_mid_stream_failure_does_not_open_a_healthy_circuit() -> None:
    clock = Clock()
    health = deployment("a", clock).health
    for _ in range(5):
        health.started()
        health.succeeded(0.01)
    health.started()
    health.succeeded(0.01, release=False)
    health.stream_ended("bad_response")
    assert health.state == "closed"
    assert health.in_flight == 0
