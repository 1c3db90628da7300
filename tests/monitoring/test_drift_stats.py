"""The drift statistics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2

from keel.monitoring.drift_stats import (
    ks_test,
    mean_distance,
    mmd_test,
    psi,
    psi_from_counts,
    psi_test,
    two_proportions,
)


def test_psi_of_two_histograms() -> None:
    # Proportions 0.5/0.5 against 0.25/0.75:
    # (0.25 - 0.5)·ln(0.25/0.5) + (0.75 - 0.5)·ln(0.75/0.5) = 0.25·ln 2 + 0.25·ln 1.5
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert psi_from_counts([50, 50], [25, 75]) == pytest.approx(expected)
    assert psi_from_counts([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)


def test_psi_bins_at_the_reference_quantiles() -> None:
    # Two bins: the reference 1..10 splits at its median 5.5, five values a side. The current
    # sample puts 7 of 8 values below it: (7/8 - 1/2)·ln(7/4) + (1/8 - 1/2)·ln(1/4).
    reference = list(range(1, 11))
    current = [1, 1, 1, 2, 2, 2, 3, 8]
    expected = 0.375 * math.log(1.75) + (-0.375) * math.log(0.25)
    assert psi(reference, current, bins=2) == pytest.approx(expected)
    value, p = psi_test(reference, current, bins=2)
    assert value == pytest.approx(expected)
    # n·m/(n+m)·PSI against χ² with one degree of freedom.
    assert p == pytest.approx(chi2.sf(10 * 8 / 18 * expected, 1))


def test_psi_floors_an_empty_bin() -> None:
    # The empty bin counts as 1e-4: (1e-4 - 0.5)·ln(1e-4/0.5) + (0.9999 - 0.5)·ln(0.9999/0.5)
    expected = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (0.9999 - 0.5) * math.log(0.9999 / 0.5)
    assert psi_from_counts([5, 5], [0, 10]) == pytest.approx(expected, rel=1e-3)


def test_ks_of_disjoint_samples() -> None:
    # Every value of one sample lies below every value of the other: D = 1. Exactly, only
    # 2 of the C(6,3) = 20 equally likely splits of the pooled values are that extreme.
    d, p = ks_test([1, 2, 3], [4, 5, 6])
    assert d == pytest.approx(1.0)
    assert p == pytest.approx(2 / 20)


def test_ks_of_one_shifted_value() -> None:
    # CDFs of [1,2,3,4] and [1,2,3,5] differ only on [4, 5), by 1/4.
    d, _ = ks_test([1, 2, 3, 4], [1, 2, 3, 5])
    assert d == pytest.approx(0.25)


def test_mmd_of_two_points() -> None:
    # One point a side at distance 1: the median heuristic picks bandwidth² = 1, so
    # K = [[1, e⁻¹], [e⁻¹, 1]] and MMD² = 1 + 1 - 2·e⁻¹.
    result = mmd_test(np.array([[0.0]]), np.array([[1.0]]), permutations=200)
    assert result.mmd2 == pytest.approx(2 - 2 / math.e)
    assert result.bandwidth == pytest.approx(1.0)


def test_mmd_permutation_test_separates_clusters_and_not_a_sample_from_itself() -> None:
    rng = np.random.default_rng(7)
    here = rng.normal(0, 1, size=(30, 4))
    there = rng.normal(6, 1, size=(30, 4))
    apart = mmd_test(here, there, permutations=200)
    # No permutation can beat the true split: p is its floor, 1 / (1 + 200).
    assert apart.p_value == pytest.approx(1 / 201)
    same = mmd_test(here, here.copy(), permutations=200)
    assert same.mmd2 == pytest.approx(0.0, abs=1e-12)
    assert same.p_value == pytest.approx(1.0)


def test_mean_distance() -> None:
    # Means (1, 0) and (1, 3): three apart.
    a = np.array([[0.0, 0.0], [2.0, 0.0]])
    b = np.array([[1.0, 2.0], [1.0, 4.0]])
    assert mean_distance(a, b) == pytest.approx(3.0)


def test_two_proportions() -> None:
    # 10/100 against 30/100: pooled 0.2, standard error sqrt(0.2·0.8·(2/100)), z = 0.2 / se,
    # two-sided p = erfc(|z| / √2).
    z = 0.2 / math.sqrt(0.2 * 0.8 * 0.02)
    assert two_proportions(10, 100, 30, 100) == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert two_proportions(0, 0, 1, 10) == 1.0
    assert two_proportions(0, 10, 0, 10) == 1.0
