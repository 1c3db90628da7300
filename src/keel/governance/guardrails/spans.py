"""Spans of text that a recognizer or a rule matched, and replacing them.

Kept apart from `pii.py` so that the guardrail engine can handle spans without importing
Presidio.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from keel.governance.guardrails.pseudonyms import Pseudonyms

__all__ = ["Span", "count", "masked", "pseudonymized", "replace_spans", "without_overlaps"]


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    label: str  # an entity type such as EMAIL_ADDRESS, or "matched" for rule patterns
    score: float = 1.0


def replace_spans(text: str, spans: list[Span], replacement: Callable[[Span], str]) -> str:
    """`text` with each of `spans` (sorted, not overlapping) replaced."""
    if not spans:
        return text
    pieces: list[str] = []
    position = 0
    for span in spans:
        pieces.append(text[position : span.start])
        pieces.append(replacement(span))
        position = span.end
    pieces.append(text[position:])
    return "".join(pieces)


def without_overlaps(spans: list[Span]) -> list[Span]:
    """Where matches disagree (a URL inside an e-mail address, an IP address read as a phone
    number), the likelier and then the longer one wins. Sorted by position."""
    if len(spans) < 2:
        return spans
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (-s.score, s.start - s.end, s.start)):
        if all(span.end <= other.start or span.start >= other.end for other in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def count(spans: Iterable[Span]) -> dict[str, int]:
    """label -> how many: what a decision records, never the matched text."""
    return dict(Counter(span.label for span in spans))


def masked(text: str, spans: list[Span]) -> str:
    """Each span replaced by its label: `<EMAIL_ADDRESS>`."""
    return replace_spans(text, spans, lambda span: f"<{span.label}>")


def pseudonymized(text: str, spans: list[Span], pseudonyms: Pseudonyms) -> str:
    """Each span replaced by its value's placeholder: `<EMAIL_ADDRESS_1>`."""
    return replace_spans(
        text, spans, lambda span: pseudonyms.placeholder(span.label, text[span.start : span.end])
    )
