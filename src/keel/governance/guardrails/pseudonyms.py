"""Placeholders that stand for PII values during one request, and putting the values back.

A value gets `<ENTITY_n>`, the same placeholder each time it occurs in the request, so the model
can still tell that two mentions are the same person. The map lives only in memory, on the
request's `Screening`; Keel never stores or logs it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping

__all__ = ["PLACEHOLDER", "Pseudonyms"]

PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)_(\d+)>")


class Pseudonyms(Mapping[str, str]):
    """placeholder -> original value, for one request."""

    def __init__(self) -> None:
        self._originals: dict[str, str] = {}
        self._placeholders: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}
        self.longest = 0

    def placeholder(self, entity: str, value: str) -> str:
        """The placeholder for `value`, the same one every time within the request."""
        key = (entity, value)
        found = self._placeholders.get(key)
        if found is not None:
            return found
        number = self._counts.get(entity, 0) + 1
        self._counts[entity] = number
        placeholder = f"<{entity}_{number}>"
        self._placeholders[key] = placeholder
        self._originals[placeholder] = value
        self.longest = max(self.longest, len(placeholder))
        return placeholder

    def restore(self, text: str) -> str:
        """`text` with every known placeholder replaced by its original value."""
        if not self._originals or "<" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._originals.get(m.group(0), m.group(0)), text)

    def restore_in_json(self, text: str) -> str:
        """Like `restore`, for placeholders inside JSON strings (tool-call arguments): the
        original is escaped so the JSON stays valid."""
        if not self._originals or "<" not in text:
            return text

        def escaped(match: re.Match[str]) -> str:
            original = self._originals.get(match.group(0))
            return match.group(0) if original is None else json.dumps(original)[1:-1]

        return PLACEHOLDER.sub(escaped, text)

    def could_start_placeholder(self, tail: str) -> bool:
        """Whether `tail` (text after the last "<") may still grow into a known placeholder."""
        if ">" in tail or len(tail) >= self.longest:
            return False
        return any(placeholder.startswith(tail) for placeholder in self._originals)

    def __getitem__(self, placeholder: str) -> str:
        return self._originals[placeholder]

    def __iter__(self) -> Iterator[str]:
        return iter(self._originals)

    def __len__(self) -> int:
        return len(self._originals)

    def __repr__(self) -> str:
        # Never the values: a Screening may end up in a log line or a traceback.
        return f"Pseudonyms({len(self)} placeholders)"
