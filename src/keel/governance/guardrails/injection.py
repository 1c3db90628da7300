"""Prompt-injection heuristics: phrases that jailbreaks and injected instructions use.

A heuristic, not a detector: it catches the common, copy-pasted attacks and misses paraphrases
and other languages, and a prompt that discusses prompt injection can trip it. Each phrase has a
weight; a text's score is 1 - prod(1 - weight) over the phrases it contains, so one strong
phrase or several weak ones reach the rule's threshold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["HEURISTICS", "InjectionScore", "score_injection"]

_VERBS = r"(?:ignore|disregard|forget|override|bypass|skip|drop)"
_EARLIER = r"(?:previous|prior|above|earlier|preceding|foregoing|initial|original|system)"
_ORDERS = r"(?:instructions?|prompts?|rules|directions|directives|guidelines|context|messages?)"

HEURISTICS: tuple[tuple[str, float, str], ...] = (
    (
        "ignore previous instructions",
        0.8,
        rf"\b{_VERBS}\b[\w\s,']{{0,30}}?\b(?:all|any|the|your|my|of)?\s*{_EARLIER}\s+{_ORDERS}\b",
    ),
    (
        "disregard the system prompt",
        0.8,
        rf"\b{_VERBS}\b.{{0,30}}?\bsystem\s+(?:prompt|message|instructions?)\b",
    ),
    (
        "reveal the system prompt",
        0.7,
        r"\b(?:reveal|print|repeat|leak|output|show|display|dump|tell\s+me|give\s+me)\b.{0,40}?"
        r"\b(?:your|the)\s+(?:system|initial|original|hidden|secret)\s+"
        r"(?:prompt|instructions|message)\b",
    ),
    (
        "repeat the text above",
        0.6,
        r"\b(?:repeat|print|output)\s+(?:all\s+)?(?:the\s+)?(?:words|text|everything)\s+above\b",
    ),
    (
        "you are now DAN",
        0.9,
        r"\b(?:you\s+are\s+now|you're\s+now|act\s+as|pretend\s+to\s+be|from\s+now\s+on\s+you\s+are)"
        r"\s+(?:a\s+|an\s+)?(?:DAN|STAN|DUDE|AIM|jailbroken|unfiltered|uncensored|unrestricted)\b",
    ),
    ("do anything now", 0.8, r"\bdo\s+anything\s+now\b"),
    (
        "special mode",
        0.6,
        r"\b(?:enable|enter|activate)\s+(?:developer|god|jailbreak|sudo)\s+mode\b",
    ),
    (
        "no restrictions",
        0.7,
        r"\b(?:pretend|imagine|act\s+as\s+if)\b.{0,30}?\byou\s+(?:have|had|are\s+under)\s+no\s+"
        r"(?:rules|restrictions|guidelines|filters|limitations)\b",
    ),
    (
        "freed from rules",
        0.5,
        r"\b(?:you\s+are|you've\s+been|you\s+have\s+been)\s+(?:freed|released|liberated)\b"
        r"|\bnot\s+bound\s+by\s+(?:any\s+)?(?:rules|policies|guidelines|openai)\b",
    ),
    (
        "new instructions",
        0.5,
        r"\b(?:new|updated|real|actual)\s+(?:instructions|system\s+prompt)\s*:",
    ),
    ("chat template tokens", 0.7, r"<\|(?:im_start|im_end|system|endoftext)\|>|<<SYS>>|\[/?INST\]"),
    ("stay in character", 0.3, r"\bstay\s+in\s+character\b"),
    ("injected role line", 0.3, r"(?:^|\n)[ \t]*(?:#{1,3}[ \t]*)?system[ \t]*:[ \t]"),
)
_COMPILED = tuple(
    (name, weight, re.compile(pattern, re.IGNORECASE | re.DOTALL))
    for name, weight, pattern in HEURISTICS
)


@dataclass(frozen=True, slots=True)
class InjectionScore:
    score: float
    matched: int  # how many heuristics matched


def score_injection(text: str) -> InjectionScore:
    miss = 1.0
    matched = 0
    for _, weight, pattern in _COMPILED:
        if pattern.search(text):
            miss *= 1.0 - weight
            matched += 1
    return InjectionScore(round(1.0 - miss, 4), matched)
