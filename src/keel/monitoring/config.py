"""The `metrics` section of keel.yaml.

Its own base class rather than `keel.config._Section`: `keel.config` imports this module to
build `Settings`, so importing back from it would be circular. The rule is the same: unknown
fields are refused.
"""

from __future__ import annotations

import itertools
import math

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DEFAULT_DURATION_BUCKETS_S", "MetricsConfig"]

# From a cache hit (milliseconds) to a long generation (minutes): LLM calls span five orders of
# magnitude, so the buckets grow roughly 2-2.5x each.
DEFAULT_DURATION_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    320.0,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricsConfig(_Section):
    """Prometheus metrics on `GET /metrics`."""

    enabled: bool = Field(
        default=True, description="Count calls and serve `/metrics`; off, `/metrics` is a 404."
    )
    public: bool = Field(
        default=False,
        description="Serve `/metrics` without a key (for a scraper on a private network); "
        "otherwise it needs a key with `metrics.read` (any role).",
    )
    duration_buckets_s: list[float] = Field(
        default_factory=lambda: list(DEFAULT_DURATION_BUCKETS_S),
        min_length=1,
        max_length=40,
        description="Upper bounds, in seconds, of the request, upstream and time-to-first-token "
        "histograms.",
    )

    @field_validator("duration_buckets_s")
    @classmethod
    def _increasing(cls, buckets: list[float]) -> list[float]:
        if any(not math.isfinite(bound) or bound <= 0 for bound in buckets):
            raise ValueError("every bucket bound must be a positive, finite number of seconds")
        if any(later <= earlier for earlier, later in itertools.pairwise(buckets)):
            raise ValueError("bucket bounds must be strictly increasing")
        return buckets
