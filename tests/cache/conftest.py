"""Fixtures for the cache tests; each Redis test gets a key prefix of its own, removed after."""

from __future__ import annotations

import pytest

from tests.cache.helpers import FakeClock, FakeEmbedder


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()
