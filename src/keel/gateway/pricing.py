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
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage | None:
        if not usage:
            return None
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(prompt_details.get("cached_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        )


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
