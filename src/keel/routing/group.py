"""A model group: one public model id over deployments, and how the next one is chosen."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from keel.config import CircuitPolicy, GroupCacheConfig, RetryPolicy, Strategy
from keel.providers import Provider
from keel.routing.health import DeploymentHealth

__all__ = ["Deployment", "ModelGroup"]


@dataclass
class Deployment:
    provider: Provider
    health: DeploymentHealth
    price_per_1m: float | None = None  # input + output list price, for lowest_cost

    @property
    def id(self) -> str:
        return self.provider.config.id

    @property
    def weight(self) -> float:
        return self.provider.config.weight

    @property
    def tier(self) -> int:
        return self.provider.config.tier

    def in_region(self, regions: frozenset[str]) -> bool:
        """Whether a residency policy allowing `regions` may send data here. Local models
        never send data anywhere, so every policy allows them; an untagged remote never."""
        return self.provider.is_local or self.provider.config.region in regions


@dataclass
class ModelGroup:
    id: str
    deployments: list[Deployment]
    strategy: Strategy
    retry: RetryPolicy
    circuit: CircuitPolicy
    fallbacks: list[str]
    context_window_fallback: str | None = None
    content_policy_fallback: str | None = None
    cache: GroupCacheConfig = field(default_factory=GroupCacheConfig)
    random: Callable[[], float] = random.random

    @property
    def first_provider(self) -> Provider:
        return self.deployments[0].provider

    def choose(self, tried: Sequence[str], exclude: Collection[str] = ()) -> Deployment | None:
        """The deployment for the next attempt, or None when none can take it.

        Untried, healthy, unsaturated deployments come first; then healthy ones that are
        saturated or were already tried (a retry); an open circuit is never chosen.
        """
        healthy = [d for d in self.deployments if d.id not in exclude and d.health.available()]
        for pool in (
            [d for d in healthy if d.id not in tried and not d.health.saturated()],
            [d for d in healthy if d.id not in tried],
            [d for d in healthy if not d.health.saturated()],
            healthy,
        ):
            if pool:
                return self._pick(pool)
        return None

    def _pick(self, pool: list[Deployment]) -> Deployment:
        if self.strategy == "priority":
            best_tier = min(d.tier for d in pool)
            return self._weighted([d for d in pool if d.tier == best_tier])
        if self.strategy == "least_inflight":
            fewest = min(d.health.in_flight for d in pool)
            return self._weighted([d for d in pool if d.health.in_flight == fewest])
        if self.strategy == "lowest_latency":
            # Unmeasured deployments go first, so every deployment gets a latency figure.
            unmeasured = [d for d in pool if d.health.latency_s is None]
            if unmeasured:
                return self._weighted(unmeasured)
            return min(pool, key=lambda d: d.health.latency_s or 0.0)
        if self.strategy == "lowest_cost":
            return min(pool, key=_price)
        return self._weighted(pool)

    def _weighted(self, pool: list[Deployment]) -> Deployment:
        if len(pool) == 1:
            return pool[0]
        point = self.random() * sum(d.weight for d in pool)
        for deployment in pool:
            point -= deployment.weight
            if point < 0:
                return deployment
        return pool[-1]


def _price(deployment: Deployment) -> float:
    if deployment.provider.is_local:
        return 0.0
    return deployment.price_per_1m if deployment.price_per_1m is not None else float("inf")
