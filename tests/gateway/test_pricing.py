from __future__ import annotations

import pytest

from keel.config import PriceConfig
from keel.gateway import PriceTable, Usage


def test_shipped_table_is_versioned_and_matches_dated_model_names() -> None:
    table = PriceTable()
    assert table.version
    assert table.price_for("gpt-4o-2024-08-06") == table.price_for("gpt-4o")
    assert table.price_for("gpt-4o-mini-2024-07-18") == table.price_for("gpt-4o-mini")
    assert table.price_for("claude-sonnet-4-5-20250929") == table.price_for("claude-sonnet-4-5")
    assert table.price_for("totally-unknown-model") is None


def test_overrides_win_and_deployment_ids_are_looked_up_first() -> None:
    table = PriceTable(
        {"gpt-4o": PriceConfig(input=1, output=1), "mine": PriceConfig(input=9, output=9)}
    )
    assert table.price_for("gpt-4o") == PriceConfig(input=1, output=1)
    assert table.price_for("mine", "gpt-4o") == PriceConfig(input=9, output=9)


def test_cost_splits_cached_input() -> None:
    price = PriceConfig(input=2.0, output=8.0, cached_input=0.5)
    usage = Usage(prompt_tokens=1000, completion_tokens=500, cached_tokens=400)
    assert PriceTable.cost(price, usage) == pytest.approx((600 * 2 + 400 * 0.5 + 500 * 8) / 1e6)
    no_cache_price = PriceConfig(input=2.0, output=8.0)
    assert PriceTable.cost(no_cache_price, usage) == pytest.approx((1000 * 2 + 500 * 8) / 1e6)


def test_usage_reads_openai_details() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 7},
        }
    )
    assert usage == Usage(10, 20, 4, 7)
    assert Usage.from_openai(None) is None
