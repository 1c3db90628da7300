"""The statistics drift reports are made of, on numpy arrays. Pure functions, no I/O.

- `psi`: Population Stability Index over the reference's quantile bins.
- `ks_test`: the two-sample Kolmogorov-Smirnov test (scipy).
- `mmd_test`: squared Maximum Mean Discrepancy with an RBF kernel, and its permutation p-value.
- `mean_distance`: Euclidean distance between the two samples' mean vectors.
- `two_proportions`: the two-proportion z-test, for rates (errors, refusals, PII hits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MmdResult",
    "ks_test",
    "mean_distance",
    "mmd_test",
    "psi",
    "psi_from_counts",
    "psi_test",
    "quantile_edges",
    "two_proportions",
]

# A bin that is empty on one side would make PSI infinite; proportions are floored here, the
# usual convention (it caps one empty bin's contribution at about 0.1 * ln(1000) ≈ 0.7).
_PSI_FLOOR = 1e-4

FloatArray = NDArray[np.float64]


def psi_from_counts(reference: Any, current: Any) -> float:
    """PSI = Σ (c - r) · ln(c / r) over bins, with r and c the two sides' bin proportions."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape or ref.sum() <= 0 or cur.sum() <= 0:
        raise ValueError("psi needs two non-empty histograms over the same bins")
    r = np.maximum(ref / ref.sum(), _PSI_FLOOR)
    c = np.maximum(cur / cur.sum(), _PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def quantile_edges(reference: FloatArray, bins: int = 10) -> FloatArray:
    """Inner bin edges at the reference's quantiles (deciles by default), duplicates merged:
    token counts are integers, so several deciles often fall on one value."""
    quantiles = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    edges: FloatArray = np.unique(quantiles)
    return edges


def psi(reference: Any, current: Any, bins: int = 10) -> float:
    """PSI of `current` against `reference`, binned at the reference's quantiles. A value
    equal to an edge falls in the bin above it (`side="right"`), on both sides alike."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    edges = quantile_edges(ref, bins)
    size = len(edges) + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=size)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=size)
    return psi_from_counts(ref_counts, cur_counts)


def psi_test(reference: Any, current: Any, bins: int = 10) -> tuple[float, float]:
    """(PSI, p): PSI as `psi`, and how likely a PSI this large is from sampling alone. PSI is
    the symmetric (Jeffreys) divergence, so under no shift n·m/(n+m)·PSI is approximately
    χ² with (bins - 1) degrees of freedom: with 40 requests a side PSI averages ~0.45 from
    noise alone, and only the p-value tells a small sample's noise from a shift."""
    from scipy.stats import chi2

    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    edges = quantile_edges(ref, bins)
    size = len(edges) + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=size)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=size)
    value = psi_from_counts(ref_counts, cur_counts)
    used = int(np.count_nonzero(ref_counts + cur_counts))
    if used < 2:
        return value, 1.0
    scale = len(ref) * len(cur) / (len(ref) + len(cur))
    return value, float(chi2.sf(scale * value, used - 1))


def ks_test(reference: Any, current: Any) -> tuple[float, float]:
    """(D, p): the largest gap between the two empirical CDFs, and its p-value."""
    from scipy.stats import ks_2samp

    result = ks_2samp(np.asarray(reference), np.asarray(current))
    return float(result.statistic), float(result.pvalue)


def mean_distance(reference: FloatArray, current: FloatArray) -> float:
    return float(np.linalg.norm(reference.mean(axis=0) - current.mean(axis=0)))


@dataclass(frozen=True, slots=True)
class MmdResult:
    mmd2: float  # the biased estimate of squared MMD
    p_value: float
    bandwidth: float
    permutations: int


def mmd_test(
    reference: FloatArray, current: FloatArray, *, permutations: int = 200, seed: int = 0
) -> MmdResult:
    """Squared MMD with a Gaussian kernel whose bandwidth is the median pairwise distance
    (the median heuristic), and the permutation test of "both samples come from one
    distribution": p = (1 + #{permuted MMD² ≥ observed}) / (1 + permutations).

    Every permutation is a ±1/n weighting of the pooled sample, so MMD² = wᵀ K w and all
    permutations are one matrix product with the kernel matrix."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(current, dtype=np.float64)
    n, m = len(x), len(y)
    pooled = np.concatenate([x, y])
    squared = np.sum(pooled * pooled, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0.0)
    upper = distances[np.triu_indices(n + m, k=1)]
    median = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-distances / median)
    weights = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(weights @ kernel @ weights)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(weights) for _ in range(permutations)], axis=1)
    permuted = np.einsum("ij,ij->j", shuffled, kernel @ shuffled)
    exceed = int(np.sum(permuted >= observed - 1e-12))
    return MmdResult(
        mmd2=max(observed, 0.0),
        p_value=(1 + exceed) / (1 + permutations),
        bandwidth=math.sqrt(median),
        permutations=permutations,
    )


def two_proportions(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test; 1.0 when it is undefined."""
    from scipy.stats import norm

    if n_a == 0 or n_b == 0:
        return 1.0
    pooled = (hits_a + hits_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:
        return 1.0
    z = (hits_b / n_b - hits_a / n_a) / math.sqrt(variance)
    return float(2 * norm.sf(abs(z)))
