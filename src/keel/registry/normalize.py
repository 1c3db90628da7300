"""Turn the free-text values authors write in model cards into typed numbers.

Every parser takes the author's text and either returns a number or raises ValueError with a
message fit for a validation error. Constraint sentences are the exception: they are prose, so
`parse_constraint` returns only the facts it recognises and never raises; the caller keeps the
sentence either way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = [
    "MODALITIES",
    "ConstraintFacts",
    "hf_pipeline_tag",
    "merge_split_numbers",
    "metric_value",
    "parse_constraint",
    "parse_constraints",
    "parse_count",
    "parse_duration_ms",
    "parse_fraction",
    "parse_usd_per_1m_tokens",
]

MODALITIES = frozenset({"image", "audio", "video", "file"})

# A number as authors write it: "2,000", "0.002", "1.2", "1e-07", with an optional k/M/B
# multiplier.
_NUM = r"((?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?)"
# The largest token or request count a card may state (the registry stores them as 32-bit ints).
MAX_COUNT = 2**31 - 1
# Numbers beyond 10**±_MAX_EXPONENT are nobody's latency, price or count; refusing them keeps
# Decimal arithmetic and float conversion in range.
_MAX_EXPONENT = 300
_SCALE = {"": 1, "k": 1_000, "thousand": 1_000, "m": 1_000_000, "million": 1_000_000}
_SCALE_RE = r"(k|m|b|thousand|million|billion)?"
_SCALE.update({"b": 1_000_000_000, "billion": 1_000_000_000})


def _checked(value: Decimal, original: object) -> Decimal:
    if not value.is_finite():
        raise ValueError(f"expected a finite number, got {original!r}")
    if value and abs(value.adjusted()) > _MAX_EXPONENT:
        raise ValueError(f"number out of range: {original!r}")
    return value


def _decimal(number: str, scale: str | None = None) -> Decimal:
    value = _checked(Decimal(number.replace(",", "")), number)
    return value * _SCALE[(scale or "").lower()]


def _is_number(value: object) -> bool:
    # bool is an int subclass; `accuracy: yes` must not read as 1.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _from_number(value: int | float) -> Decimal:
    """An author's YAML/JSON number as a Decimal; NaN and infinities are refused."""
    if isinstance(value, int) and value.bit_length() > 1024:
        raise ValueError(f"number out of range: {value!r}")
    return _checked(Decimal(str(value)), value)


def _float(number: Decimal, original: object) -> float:
    result = float(number)
    if not math.isfinite(result):
        raise ValueError(f"number out of range: {original!r}")
    return result


def parse_count(value: object) -> int:
    """A token or request count: 2000, "2,000", "4k", "1.5M"."""
    if _is_number(value):
        number = _from_number(value)  # type: ignore[arg-type]
    elif isinstance(value, str) and (
        m := re.fullmatch(rf"\s*{_NUM}\s*{_SCALE_RE}\s*(?:tokens?)?\s*", value, re.I)
    ):
        number = _decimal(m.group(1), m.group(2))
    else:
        raise ValueError(f"expected a count such as 2000 or '4k', got {value!r}")
    if number < 0 or number != number.to_integral_value():
        raise ValueError(f"expected a whole non-negative count, got {value!r}")
    if number > MAX_COUNT:
        raise ValueError(f"a count may be at most {MAX_COUNT}, got {value!r}")
    return int(number)


def parse_fraction(value: object) -> float:
    """An accuracy-like score in 0..1: 0.9, "0.9", "90%"."""
    if _is_number(value):
        number = _from_number(value)  # type: ignore[arg-type]
    elif isinstance(value, str) and (m := re.fullmatch(rf"\s*{_NUM}\s*(%?)\s*", value)):
        number = _decimal(m.group(1)) / (100 if m.group(2) else 1)
    else:
        raise ValueError(
            f"expected a fraction such as 0.9 or a percentage such as '90%', got {value!r}"
        )
    if not 0 <= number <= 1:
        raise ValueError(f"expected a value between 0 and 1 (or 0% and 100%), got {value!r}")
    return _float(number, value)


_DURATION_UNITS = {
    "us": Decimal("0.001"),
    "µs": Decimal("0.001"),
    "ms": Decimal(1),
    "msec": Decimal(1),
    "millisecond": Decimal(1),
    "milliseconds": Decimal(1),
    "s": Decimal(1000),
    "sec": Decimal(1000),
    "secs": Decimal(1000),
    "second": Decimal(1000),
    "seconds": Decimal(1000),
    "min": Decimal(60_000),
    "mins": Decimal(60_000),
    "minute": Decimal(60_000),
    "minutes": Decimal(60_000),
}
_DURATION_RE = re.compile(
    rf"\s*(?:~|≈|<=?|about|approx\.?|around)?\s*{_NUM}\s*({'|'.join(_DURATION_UNITS)})?"
    r"\s*(?:\((?:p\d+|avg|average|median|mean)\)|p\d+|avg|average|median|mean)?\s*",
    re.I,
)


def parse_duration_ms(value: object) -> float:
    """A latency in milliseconds: "200ms", "1.2s", "~300 ms"; a bare number is milliseconds."""
    if _is_number(value):
        number = _from_number(value)  # type: ignore[arg-type]
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
        number = _decimal(m.group(1)) * _DURATION_UNITS[(m.group(2) or "ms").lower()]
    else:
        raise ValueError(f"expected a duration such as '200ms' or '1.2s', got {value!r}")
    if number < 0:
        raise ValueError(f"expected a non-negative duration, got {value!r}")
    return _float(number, value)


_PER_TOKENS = {"": 1, "k": 1_000, "m": 1_000_000, "thousand": 1_000, "million": 1_000_000}
_COST_RE = re.compile(
    rf"\s*(?:\$|us\$|usd\s*)?{_NUM}\s*(?:usd|dollars?|\$)?\s*"
    r"(?:/|per|for|every|a)\s*"
    rf"(?:{_NUM}\s*)?(k|m|thousand|million)?\s*"
    r"(?:(?:input|output|prompt|completion)\s+)?(?:tokens?|tok)?\s*",
    re.I,
)
_BARE_COST_RE = re.compile(rf"\s*(?:\$|us\$|usd\s*)?{_NUM}\s*(?:usd)?\s*", re.I)


def parse_usd_per_1m_tokens(value: object) -> float:
    """A price normalised to USD per 1M tokens: "$0.002/1k tokens", "$2 per 1M tokens",
    "0.002 USD/1K", "$3/MTok". A bare number is already USD per 1M tokens (Keel's price unit)."""
    if _is_number(value):
        number = _from_number(value)  # type: ignore[arg-type]
    elif isinstance(value, str) and (m := _BARE_COST_RE.fullmatch(value)):
        number = _decimal(m.group(1))
    elif isinstance(value, str) and (m := _COST_RE.fullmatch(value.replace("MTok", "M tok"))):
        per = _decimal(m.group(2) or "1") * _PER_TOKENS[(m.group(3) or "").lower()]
        if per == 0:
            raise ValueError(f"price is per zero tokens: {value!r}")
        number = _decimal(m.group(1)) * 1_000_000 / per
    else:
        raise ValueError(
            f"expected a price such as '$0.002/1k tokens' or '$2 per 1M tokens', got {value!r}"
        )
    if number < 0:
        raise ValueError(f"expected a non-negative price, got {value!r}")
    return _float(number, value)


def merge_split_numbers(items: Iterable[str]) -> list[str]:
    """Rejoin items that a YAML flow list split at a thousands separator.

    `[Max sequence length 2,000 tokens]` is valid YAML, but the comma splits it into
    "Max sequence length 2" and "000 tokens". No real item starts with exactly three digits
    after one that ends in a digit group, so gluing those pairs back is safe.
    """
    merged: list[str] = []
    for item in items:
        if (
            merged
            and re.match(r"\d{3}(?!\d)", item)
            and re.search(r"(?<![\d.])\d{1,3}$", merged[-1])
        ):
            merged[-1] = f"{merged[-1]},{item}"
        else:
            merged.append(item)
    return merged


@dataclass
class ConstraintFacts:
    """What one constraint sentence states; None where it says nothing."""

    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    rejected_modalities: set[str] = field(default_factory=set)
    tokens_per_day: int | None = None
    requests_per_minute: int | None = None


# Not the tail of a longer number or of a power ("10^23" is no count Keel can hold).
_AMOUNT = rf"(?<![\d.^]){_NUM}\s*(k|m|b|thousand|million)?"
_DAY = r"(?:per\s+day|a\s+day|/\s*day|each\s+day|daily|per\s+24\s*h(?:ours?)?)"
_MINUTE = r"(?:per\s+minute|a\s+minute|/\s*min(?:ute)?|each\s+minute|per\s+min)"
_TOKENS_PER_DAY = [
    rf"{_AMOUNT}\s*tokens?\s*{_DAY}",
    rf"{_AMOUNT}\s*tpd\b",
    rf"daily\s+(?:limit|quota|cap)\s+(?:of\s+)?{_AMOUNT}\s*tokens?",
]
_REQUESTS_PER_MINUTE = [
    rf"{_AMOUNT}\s*(?:requests?|reqs?|calls?)\s*{_MINUTE}",
    rf"{_AMOUNT}\s*rpm\b",
]
_MODALITY_WORDS = {
    "image": r"images?|vision|pictures?|photos?|visual",
    "audio": r"audio|speech|voice|sound",
    "video": r"videos?",
    "file": r"files?|pdfs?|documents?|attachments?",
}
_NEGATION = r"\b(?:no|not|without|cannot|can't|doesn't|don't|unsupported|isn't|aren't|never)\b"
_TEXT_ONLY = r"\b(?:text[\s-]+only|only\s+(?:accepts?\s+)?text|text\s+inputs?\s+only)\b"
_OUTPUT_WORDS = r"\b(?:output|completion|generation|generated|response|reply)\b"
_INPUT_WORDS = r"\b(?:input|prompt|context|sequence|window|length|max|maximum|limit|up\s+to)\b"


def _amount(number: str, scale: str | None) -> int | None:
    """A whole count stated in prose; None where it is no usable count (out of range)."""
    try:
        value = _decimal(number, scale)
    except ValueError:
        return None
    return int(value) if 0 <= value <= MAX_COUNT else None


def _find_amount(patterns: list[str], text: str) -> tuple[int | None, str]:
    """The first amount a pattern finds, and the text with that span removed."""
    for pattern in patterns:
        if m := re.search(pattern, text, re.I):
            return _amount(m.group(1), m.group(2)), text[: m.start()] + text[m.end() :]
    return None, text


def parse_constraint(sentence: str) -> ConstraintFacts:
    """Recognise quotas, token limits and rejected modalities in one constraint sentence."""
    text = sentence.lower()
    facts = ConstraintFacts()
    # Quotas first, and cut them out, so "10k tokens daily" is not also read as a token limit.
    facts.tokens_per_day, text = _find_amount(_TOKENS_PER_DAY, text)
    facts.requests_per_minute, text = _find_amount(_REQUESTS_PER_MINUTE, text)
    if re.search(_TEXT_ONLY, text):
        facts.rejected_modalities |= MODALITIES
    # "Supports image input but not audio": each clause is negated (or not) on its own.
    for clause in re.split(r"\bbut\b|;|\.\s", text):
        if re.search(_NEGATION, clause):
            for modality, words in _MODALITY_WORDS.items():
                if re.search(rf"\b(?:{words})\b", clause):
                    facts.rejected_modalities.add(modality)
    # "8k input / 2k output tokens" states two limits; judge each part by its own words.
    about_tokens = re.search(r"\btokens?\b|\bcontext\b|\bwindow\b", text)
    for part in re.split(r"[;/]|\band\b", text):
        found = [
            _amount(m.group(1), m.group(2))
            for m in re.finditer(rf"(?<![\w.$-]){_AMOUNT}(?![\w%$^])", part)
        ]
        # A part stating an amount out of range states no limit Keel can enforce; its small
        # numbers are strays, not the limit.
        amounts = [amount for amount in found if amount is not None]
        if not amounts or None in found or not about_tokens:
            continue
        # Stray small numbers ("v2") share sentences with limits; the limit is the big one.
        amount = max(amounts)
        if re.search(_OUTPUT_WORDS, part):
            facts.max_output_tokens = amount
        elif re.search(_INPUT_WORDS, part):
            facts.max_input_tokens = amount
    return facts


def parse_constraints(sentences: Iterable[str]) -> ConstraintFacts:
    """What a card's constraints state together. Where two sentences disagree the stricter one
    wins, since a caller that respects both is safe."""
    total = ConstraintFacts()
    for sentence in sentences:
        facts = parse_constraint(sentence)
        total.rejected_modalities |= facts.rejected_modalities
        for name in (
            "max_input_tokens",
            "max_output_tokens",
            "tokens_per_day",
            "requests_per_minute",
        ):
            value, seen = getattr(facts, name), getattr(total, name)
            if value is not None:
                setattr(total, name, value if seen is None else min(value, seen))
    return total


def hf_pipeline_tag(model_type: str | None) -> str:
    """The Hugging Face pipeline tag closest to a card's free-text `type`."""
    kind = (model_type or "").lower()
    if "embed" in kind:
        return "feature-extraction"
    if "classif" in kind and "generat" not in kind:
        return "text-classification"
    return "text-generation"


def metric_value(text: str) -> float | str:
    """A declared metric as a number where it is one; HF accepts text values too."""
    try:
        return float(text)
    except ValueError:
        return text
