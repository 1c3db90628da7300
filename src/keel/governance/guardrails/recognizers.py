"""The Presidio analyzer Keel runs: pattern recognizers only, no spaCy model, no network.

Presidio's default engine loads a spaCy model for names and places; Keel builds the engine with
Presidio's `NoOpNlpEngine` instead, and a registry holding only regex-based recognizers: most of
Presidio's generic ones, Keel's credential recognizers, and those configured under
`pii.recognizers`. Two of Presidio's recognizers are replaced:

* e-mail: Presidio validates the domain with `tldextract`'s default extractor, which downloads
  the Public Suffix List on first use; Keel's reads the snapshot that ships in the package.
* phone: Presidio runs libphonenumber's matcher over the whole text once per region (about 7 ms
  for a 2 KB prompt); Keel finds candidates with one regex and asks libphonenumber about those.

Without spaCy there are no lemmas, so Presidio's context enhancer cannot see the words around a
match; `WindowContextEnhancer` looks at the few words before it instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import phonenumbers
import regex
import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NoOpNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    CryptoRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    MacAddressRecognizer,
    UrlRecognizer,
    UsSsnRecognizer,
)

from keel.governance.guardrails.config import CustomRecognizer

__all__ = ["build_analyzer"]

LANGUAGE = "en"
# Credentials are case-sensitive by construction; Presidio's default flags ignore case.
CASE_SENSITIVE = regex.DOTALL | regex.MULTILINE

SECRET_PATTERNS: dict[str, list[tuple[str, str, float]]] = {
    "OPENAI_API_KEY": [
        ("openai", r"\bsk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}", 0.9),
    ],
    "ANTHROPIC_API_KEY": [("anthropic", r"\bsk-ant-[A-Za-z0-9_\-]{20,}", 0.95)],
    "AWS_ACCESS_KEY_ID": [("aws", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b", 0.9)],
    "GITHUB_TOKEN": [
        ("github", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b", 0.95),
        ("github fine-grained", r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b", 0.95),
    ],
    "SLACK_TOKEN": [("slack", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}", 0.9)],
    "KEEL_API_KEY": [("keel", r"\bkeel_[a-z]{2}_[A-Za-z0-9_\-]{20,}", 0.95)],
    # Only the token: "Bearer" stays, so a masked header still reads as one.
    # (\K, unlike a lookbehind, costs nothing where no "bearer" is.)
    "BEARER_TOKEN": [("bearer", r"\b(?i:bearer)[ \t]+\K[A-Za-z0-9\-._~+/]{16,}=*", 0.8)],
    # The whole block when it is complete, else the header line.
    "PRIVATE_KEY": [
        (
            "pem",
            r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----(?:.*?-----END \1PRIVATE KEY-----)?",
            0.95,
        )
    ],
}
PHONE_CONTEXT = ["phone", "tel", "call", "mobile", "cell", "fax", "whatsapp", "number"]
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, validating domains against the bundled suffix list."""

    _domains = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    def validate_result(self, pattern_text: str) -> bool:
        return self._domains(pattern_text).fqdn != ""


class CandidatePhoneRecognizer(PatternRecognizer):
    """Digit runs that look like phone numbers, kept when libphonenumber calls them valid in
    one of `regions` (or anywhere, for a number written with +)."""

    # An optional +, or an area code in parentheses, then digits and separators.
    CANDIDATE = (
        r"(?<![\w+\-.(])(?:\+?\d|\(\+?\d{1,5}\)[ \t.\-]?\d)[\d \t().\-]{5,20}\d(?![\w\-]|\.\d)"
    )
    # Shapes that collide with other entities: dates, dotted quads, US SSNs.
    NOT_PHONES = re.compile(
        r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}|\d{1,3}(?:\.\d{1,3}){3}|\d{3}-\d{2}-\d{4}"
    )

    def __init__(self, regions: Sequence[str] = PHONE_REGIONS) -> None:
        super().__init__(
            supported_entity="PHONE_NUMBER",
            name="CandidatePhoneRecognizer",
            patterns=[Pattern("phone candidate", self.CANDIDATE, 0.6)],
            context=PHONE_CONTEXT,
            global_regex_flags=regex.MULTILINE,
        )
        self.regions = tuple(regions)

    def invalidate_result(self, pattern_text: str) -> bool:
        digits = sum(char.isdigit() for char in pattern_text)
        if not 7 <= digits <= 15 or self.NOT_PHONES.fullmatch(pattern_text):
            return True
        international = pattern_text.lstrip("(").startswith("+")
        for region in (None,) if international else self.regions:
            try:
                number = phonenumbers.parse(pattern_text, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return False
        return True


class WindowContextEnhancer(ContextAwareEnhancer):
    """Raises a result's score when one of its recognizer's context words occurs among the
    `context_prefix_count` words before it (as a substring, like Presidio's default)."""

    WORD = re.compile(r"\w+")

    def __init__(self, factor: float = 0.35, floor: float = 0.4, words: int = 5) -> None:
        super().__init__(
            context_similarity_factor=factor,
            min_score_with_context_similarity=floor,
            context_prefix_count=words,
            context_suffix_count=0,
        )

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        by_id = {recognizer.id: recognizer for recognizer in recognizers}
        extra = [word.lower() for word in context or []]
        for result in raw_results:
            metadata = result.recognition_metadata or {}
            recognizer = by_id.get(metadata.get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY))
            if recognizer is None or not recognizer.context or result.score >= self.MAX_SCORE:
                continue
            if metadata.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY):
                continue
            window = text[max(0, result.start - 100) : result.start].lower()
            nearby = self.WORD.findall(window)[-self.context_prefix_count :] + extra
            if any(word in token for word in recognizer.context for token in nearby):
                boosted = max(result.score + self.context_similarity_factor, self.floor)
                result.score = min(boosted, self.MAX_SCORE)
        return raw_results

    @property
    def floor(self) -> float:
        return float(self.min_score_with_context_similarity)


def _secret_recognizers() -> list[PatternRecognizer]:
    return [
        PatternRecognizer(
            supported_entity=entity,
            name=f"Keel{entity.title().replace('_', '')}Recognizer",
            patterns=[Pattern(name, pattern, score) for name, pattern, score in patterns],
            global_regex_flags=CASE_SENSITIVE,
        )
        for entity, patterns in SECRET_PATTERNS.items()
    ]


def _custom_recognizer(index: int, custom: CustomRecognizer) -> PatternRecognizer:
    patterns = [
        Pattern(f"{custom.entity} #{number}", pattern, custom.score)
        for number, pattern in enumerate(custom.patterns, start=1)
    ]
    return PatternRecognizer(
        supported_entity=custom.entity,
        name=f"Custom{index}{custom.entity}",
        patterns=patterns,
        context=[word.lower() for word in custom.context],
        global_regex_flags=CASE_SENSITIVE,
    )


def _recognizers(custom: Sequence[CustomRecognizer]) -> list[Any]:
    presidio = [
        OfflineEmailRecognizer(),
        CandidatePhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        MacAddressRecognizer(),
        CryptoRecognizer(),
        UrlRecognizer(),
        UsSsnRecognizer(),
    ]
    configured = [_custom_recognizer(index, item) for index, item in enumerate(custom)]
    return [*presidio, *_secret_recognizers(), *configured]


def build_analyzer(custom: Sequence[CustomRecognizer] = ()) -> AnalyzerEngine:
    """An AnalyzerEngine over pattern recognizers only; loads no model, opens no connection."""
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in _recognizers(custom):
        registry.add_recognizer(recognizer)
    nlp = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp,
        supported_languages=[LANGUAGE],
        context_aware_enhancer=WindowContextEnhancer(),
    )
