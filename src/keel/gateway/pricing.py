"""Cost accounting from a versioned price table (USD per 1M tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from keel.config import PriceConfig

__all__ = ["PriceTable", "Usage"]

_SHIPPED = Path(__file__).with_name("prices.yaml")


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        """Read OpenAI's usage object; counts that are missing or not numbers read as 0."""
        if not usage or not isinstance(usage, dict):
            return None
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
        return cls(
            prompt_tokens=_count(usage, "prompt_tokens"),
            completion_tokens=_count(usage, "completion_tokens"),
            cached_tokens=_count(prompt_details, "cached_tokens"),
            reasoning_tokens=_count(completion_details, "reasoning_tokens"),
        )


def _count(container: Any, key: str) -> int:
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class PriceTable:
    def __init__(self, overrides: dict[str, PriceConfig] | None = None) -> None:
        shipped = yaml.safe_load(_SHIPPED.read_text(encoding="utf-8"))
        self.version: str = shipped["version"]
        self._prices: dict[str, PriceConfig] = {
            name: PriceConfig.model_validate(price) for name, price in shipped["models"].items()
        }
        self._prices.update(overrides or {})
        self._cache: dict[str, PriceConfig | None] = {}

    def price_for(self, *names: str) -> PriceConfig | None:
        """The price of the first name that matches exactly or by `-` prefix."""
        for name in names:
            price = self._lookup(name)
            if price is not None:
                return price
        return None

    def _lookup(self, name: str) -> PriceConfig | None:
        if name not in self._cache:
            candidate = name
            found = self._prices.get(candidate)
            while found is None and "-" in candidate:
                candidate = candidate.rsplit("-", 1)[0]
                found = self._prices.get(candidate)
            self._cache[name] = found
        return self._cache[name]

    @staticmethod
    def cost(price: PriceConfig, usage: Usage) -> float:
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cached_price = price.cached_input if price.cached_input is not None else price.input
        return (
            (usage.prompt_tokens - cached) * price.input
            + cached * cached_price
            + usage.completion_tokens * price.output
        ) / 1_000_000
