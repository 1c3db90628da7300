"""The semantic cache's precision guard: a candidate that is similar enough must also agree with
the new prompt on what sentence embeddings blur.

An embedding puts "refunds for orders over $100" and "…under $100" at a cosine of about 0.97:
the sentences share every word but one, and that one word is the question. So after the
similarity search, the two prompt texts are compared lexically, and the candidate is refused
when they disagree on any of these (the refusal's reason in brackets):

- numbers and quantities, number words included ("three" is 3, "second" is 2) [numbers]
- calendar words, and numbers that read as years (1000-2199) [dates]
- negation: the count of not / no / never / without / n't differs, or one prompt has a word the
  other has with a negating prefix (eligible / ineligible, magnetic / non-magnetic) [negation]
- direction and degree: words from opposite ends of one scale (over / under, before / after,
  include / exclude, ascending / descending, ...), or the same two languages or units in the
  other order ("from English to Spanish") [antonyms]
- natural and programming language names [language]
- units of measure, when both prompts name one [units]
- capitalised words and acronyms that are not at the start of a sentence [entities]
- code identifiers: snake_case, camelCase, dotted.names, std::names, --flags, operators, and
  `backticked` spans [code]
- 'quoted' or "quoted" strings, and the text after a colon when both prompts have one [quoted]

Everything else (synonyms, word order, "do" or "can", British spelling) is left to the
embedding. The checks are pure functions over the two texts, a few regular expressions and set
operations: tens of microseconds for a prompt of a sentence or two.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal


def _words(text: str) -> list[str]:
    return text.split()


__all__ = [
    "GUARD_LEVELS",
    "REASONS",
    "GuardLevel",
    "PromptFacts",
    "Verifier",
    "contrast",
    "facts",
    "judge_verifier",
]

GuardLevel = Literal["off", "lexical", "verify"]
# (cached prompt, new prompt) -> may the cached answer be served for the new prompt?
Verifier = Callable[[str, str], Awaitable[bool]]
ChatFn = Callable[[str, list[dict[str, Any]]], Awaitable[str]]
GUARD_LEVELS: tuple[GuardLevel, ...] = ("off", "lexical", "verify")
REASONS = (
    "quoted",
    "code",
    "numbers",
    "dates",
    "negation",
    "antonyms",
    "language",
    "units",
    "entities",
)

_QUOTED = re.compile(
    r"""`([^`]+)`|(?<![\w'])'([^']+)'(?![\w'])|"([^"]+)"|\u201c([^\u201d]+)\u201d|\u2018([^\u2019]+)\u2019"""
)
_CONTRACTIONS = (
    (re.compile(r"\b(can)not\b", re.I), r"\1 not"),
    (re.compile(r"\bwon['\u2019]t\b", re.I), "will not"),
    (re.compile(r"\bcan['\u2019]t\b", re.I), "can not"),
    (re.compile(r"\bshan['\u2019]t\b", re.I), "shall not"),
    (re.compile(r"(\w)n['\u2019]t\b", re.I), r"\1 not"),
    (re.compile(r"(\w)['\u2019](s|re|ve|ll|d|m)\b", re.I), r"\1"),
)
# A token: an identifier-ish run (letters, digits, _ . :: and inner hyphens), a flag, a number
# with separators, or a run of operator characters.
_TOKEN = re.compile(
    r"(?<![\w-])--?[A-Za-z][\w-]*"
    r"|[$\u20ac\u00a3]?\d[\d,]*(?:\.\d+)?(?:st|nd|rd|th|s)?%?"
    r"|[A-Za-z_\u00c0-\u024f\u00b0][\w\u00c0-\u024f\u00b0]*(?:(?:\.|::|-|/)[A-Za-z_\d][\w]*)*(?:\(\))?[+#]*"
    r"|[=!<>]=+|[<>]|&&|\|\||%"
)
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_OPERATOR = re.compile(r"[=!<>]=+|[<>]|&&|\|\|")
_DOTTED = re.compile(r"[A-Za-z]\.[A-Za-z]")
_INITIALS = re.compile(r"[A-Za-z](?:\.[A-Za-z])+")  # e.g, i.e
_CAMEL = re.compile(r"[a-z][A-Z]")
_PRODUCT = re.compile(r"i[A-Z][a-z]+")
_PART_SEPARATOR = re.compile(r"[-/]")
# Where a sentence's first word begins: quotes and brackets before it do not count.
_SENTENCE_START = re.compile(r"(?:^|[.?!:;]\s+|\n)[\"'`(\[{\u201c\u2018\s]*")

_NUMBER_WORDS: dict[str, float] = {
    word: index
    for index, word in enumerate(
        _words(
            "zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen"
            " fifteen sixteen seventeen eighteen nineteen twenty"
        )
    )
    if word != "_"
}
_NUMBER_WORDS |= {
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
    "hundred": 100,
    "thousand": 1000,
    "million": 1_000_000,
    "billion": 1_000_000_000,
    "dozen": 12,
    "twice": 2,
    "double": 2,
    "triple": 3,
    "half": 0.5,
}
_ORDINALS = {
    word: index + 1
    for index, word in enumerate(
        _words("first second third fourth fifth sixth seventh eighth ninth tenth")
    )
}
_ROMAN = {"II": 2, "III": 3, "IV": 4, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "XI": 11, "XII": 12}

_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "non"}
)
_NEGATING_PREFIXES = ("non", "un", "in", "im", "ir", "il", "dis", "de", "anti")

# Each word is one end of a scale; words on the same scale and end are the same pole.
_SCALES: dict[str, tuple[str, int]] = {}
for _scale, _high, _low in (
    ("amount", "over above more greater exceeding exceeds exceed", "under below less fewer"),
    ("order", "after later since following", "before earlier prior until preceding"),
    ("membership", "include includes including", "exclude excludes excluding"),
    (
        "change",
        "increase increases raise grow rise rises rising up",
        "decrease decreases reduce shrink fall falls falling drop down lower",
    ),
    ("merit", "advantages advantage pros benefits", "disadvantages disadvantage cons drawbacks"),
    ("sort", "ascending asc", "descending desc"),
    ("size", "largest biggest bigger larger big large", "smallest smaller small tiniest"),
    ("bound", "maximum max highest most upper", "minimum min lowest least"),
    ("plan", "upgrade", "downgrade"),
    ("cipher", "encrypt encryption encode", "decrypt decryption decode"),
    ("switch", "enable enabled activate", "disable disabled deactivate"),
    ("result", "gain gained gains win won winners", "lose lost losses loss losers"),
    ("speed", "faster quicker", "slower"),
    ("flow", "import imports importing upload", "export exports exporting download"),
    ("membership_change", "add added adding insert", "remove removed removing delete"),
    ("packing", "compress compression zip", "decompress decompression unzip"),
    ("state", "open opened", "closed close shut"),
    ("position", "first start beginning top", "last end bottom"),
    ("side", "left", "right"),
    ("trade", "buy buying bought", "sell selling sold"),
    ("temperature", "hot warm", "cold cool"),
    ("truth", "true", "false"),
    ("success", "pass passes passing succeed", "fail fails failing"),
    ("direction", "north east", "south west"),
):
    for _word in _high.split():
        _SCALES[_word] = (_scale, 1)
    for _word in _low.split():
        _SCALES[_word] = (_scale, -1)

_LANGUAGES = frozenset(
    _words(
        "english french spanish german italian portuguese dutch russian polish greek chinese"
        " mandarin cantonese japanese korean arabic hindi turkish swedish norwegian danish finnish"
        " hebrew vietnamese thai indonesian czech ukrainian romanian hungarian latin"
        " python javascript typescript java kotlin scala haskell ruby rust golang go c c++ c#"
        " php perl swift bash powershell sql mongodb lua elixir erlang clojure dart r matlab"
        " julia fortran cobol html css"
    )
)
_LANGUAGE_ALIASES = {"js": "javascript", "ts": "typescript", "py": "python", "golang": "go"}

_UNITS = {
    "kilometer": "km kilometers kilometre kilometres km",
    "meter": "m meters metre metres",
    "centimeter": "cm centimeters centimetre centimetres",
    "millimeter": "mm millimeters",
    "mile": "miles mi",
    "foot": "feet ft",
    "inch": "inches",
    "yard": "yards yd",
    "gram": "g grams gr",
    "kilogram": "kg kilograms kilo kilos",
    "pound": "pounds lb lbs",
    "ounce": "ounces oz",
    "liter": "l liters litre litres",
    "milliliter": "ml milliliters",
    "gallon": "gallons gal",
    "quart": "quarts qt",
    "pint": "pints",
    "cup": "cups",
    "tablespoon": "tablespoons tbsp",
    "teaspoon": "teaspoons tsp",
    "celsius": "\u00b0c centigrade",
    "fahrenheit": "\u00b0f",
    "kelvin": "",
    "millisecond": "ms milliseconds",
    "second": "seconds sec secs",
    "minute": "minutes min mins",
    "hour": "hours hr hrs hourly",
    "day": "days daily",
    "week": "weeks weekly",
    "month": "months monthly",
    "year": "years yearly annual annually",
    "mph": "",
    "km/h": "kph kmh",
    "byte": "bytes",
    "kb": "kilobytes kilobyte",
    "mb": "megabytes megabyte",
    "gb": "gigabytes gigabyte",
    "tb": "terabytes terabyte",
    "dollar": "dollars usd $",
    "euro": "euros eur \u20ac",
    "yen": "jpy",
    "calorie": "calories kcal",
    "percent": "% percentage",
    "watt": "watts w",
    "volt": "volts v",
}
_UNIT_OF = {name: name for name in _UNITS}
for _name, _aliases in _UNITS.items():
    for _alias in _aliases.split():
        _UNIT_OF[_alias] = _name
# Short aliases that are also ordinary words or letters count only right after a number.
_UNIT_AFTER_NUMBER_ONLY = frozenset({"m", "g", "l", "w", "v", "mi", "min", "sec", "gr"})

_MONTHS = _words(
    "january february march april may june july august september october november december"
)
_DATE_WORDS = {month: month for month in _MONTHS}
_DATE_WORDS |= {month[:3]: month for month in _MONTHS if month != "may"} | {"sept": "september"}
_DATE_WORDS |= {
    word: word.rstrip("s")
    for word in _words(
        "monday tuesday wednesday thursday friday saturday sunday mondays tuesdays wednesdays"
        " thursdays fridays saturdays sundays today tomorrow yesterday tonight morning afternoon"
        " evening night weekend weekday noon midnight spring summer autumn winter am pm"
        " q1 q2 q3 q4 century decade"
    )
}

# Words that are capitalised at the start of a sentence or as a title, not as a name.
_NOT_NAMES = frozenset({"i", "please", "ok", "okay", "hi", "hello", "hey", "thanks", "a", "the"})


@dataclass(frozen=True, slots=True)
class PromptFacts:
    """What the guard compares, extracted once per prompt text."""

    words: frozenset[str]  # lowercased tokens, everything in the prompt
    quoted: frozenset[str]
    payload: str | None  # the text after a colon
    code: frozenset[str]
    numbers: Counter[str]
    negations: int
    poles: dict[str, frozenset[int]]
    languages: tuple[str, ...]  # in order of appearance
    units: tuple[str, ...]
    dates: frozenset[str]
    names: frozenset[str]


def _clean(text: str) -> str:
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _number_value(raw: str) -> str:
    value = float(raw.replace(",", ""))
    return f"{value:g}"


def _is_code(token: str) -> bool:
    if token.isalpha() and (token.islower() or token[1:].islower() or token.isupper()):
        return False  # a plain word: the common case, decided without a regex
    if token.startswith("-") and len(token) > 1 and token[1] != "-" and not token[1].isdigit():
        return True
    if "_" in token.strip("_") or token.startswith("__") or "::" in token or token.endswith("()"):
        return True
    core = token.rstrip("+#")
    if _DOTTED.search(core) and not _INITIALS.fullmatch(core):
        return True
    # camelCase or PascalCase with an inner capital: useEffect, KeyError (not "iPhone"-style
    # product names, which are names).
    return bool(_CAMEL.search(core)) and not _PRODUCT.fullmatch(core)


def _stem(word: str) -> str:
    for suffix in ("ies", "es", "s"):
        if len(word) > 4 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def _classify(part: str, token: str, unit_context: bool) -> tuple[str, str] | None:
    """What one lowercased word is to the guard: a number, a negation, one end of a scale, a
    calendar word or a unit (with its normalized value), or nothing."""
    if part in _NUMBER_WORDS:
        return "number", _number_value(str(_NUMBER_WORDS[part]))
    if part in _ORDINALS and not (part == "second" and unit_context):
        return "number", _number_value(str(_ORDINALS[part]))
    if part in _NEGATIONS:
        return "negation", part
    if part in _SCALES:
        return "scale", part
    if (
        part in _DATE_WORDS
        and (part != "may" or token[0].isupper())
        and (part not in {"am", "pm"} or unit_context)
    ):
        return "date", _DATE_WORDS[part]
    unit = _UNIT_OF.get(part)
    if unit is not None and (part not in _UNIT_AFTER_NUMBER_ONLY or unit_context):
        return "unit", unit
    if part in {"degree", "degrees"}:
        return "unit", "degree"
    return None


@lru_cache(maxsize=1024)
def facts(text: str) -> PromptFacts:
    """Extract what the guard compares from one prompt text (memoized: the cached side of a
    comparison is the same text many times)."""
    # Backticked spans are code; the other quotes are strings.
    quoted_spans = [
        next(group for group in match.groups()[1:] if group)
        for match in _QUOTED.finditer(text)
        if match.group(1) is None
    ]
    quoted = frozenset(" ".join(span.lower().split()) for span in quoted_spans)
    code = {span.lower() for match in _QUOTED.finditer(text) if (span := match.group(1))}
    colon = re.search(r":\s+(.+)$", text, flags=re.S)
    payload = None
    if colon:
        payload = " ".join(re.findall(r"\w+", colon.group(1).lower()))
    cleaned = _clean(text)
    starts = {match.end() for match in _SENTENCE_START.finditer(cleaned)}
    numbers: Counter[str] = Counter()
    negations = 0
    poles: dict[str, set[int]] = {}
    languages: list[str] = []
    units: list[str] = []
    dates: set[str] = set()
    names: set[str] = set()
    words: set[str] = set()
    after_number = False
    previous = ""
    for match in _TOKEN.finditer(cleaned):
        token = match.group(0)
        lower = token.lower()
        follows_number, after_number = after_number, False
        language = _LANGUAGE_ALIASES.get(lower, lower)
        if language in _LANGUAGES and (language not in {"go", "c", "r"} or token[0].isupper()):
            languages.append(language)
            words.add(lower)
            previous = lower
            continue
        if _is_code(token) or _OPERATOR.fullmatch(token):
            code.add(lower)
            words.add(lower)
            previous = lower
            continue
        if token[0].isdigit() or token[0] in "$\u20ac\u00a3":
            for raw in _NUMBER.findall(token):
                numbers[_number_value(raw)] += 1
            if token[0] in "$\u20ac\u00a3":
                units.append(_UNIT_OF[token[0]])
            if token.endswith("%"):
                units.append("percent")
            after_number = True
            previous = lower
            continue
        if token in _ROMAN:
            numbers[_number_value(str(_ROMAN[token]))] += 1
            continue
        if not token.isalpha():
            # Letters then digits (Q3, S24): the digits are a number, the whole maybe a name.
            for raw in _NUMBER.findall(token):
                numbers[_number_value(raw)] += 1
        parts = (
            [lower]
            if lower in _UNIT_OF or token.isalpha()
            else [part for part in _PART_SEPARATOR.split(lower) if part]
        )
        classified = False
        for part in parts:
            words.add(part)
            kind = _classify(part, token, follows_number or previous == "per")
            previous = part
            if kind is None:
                continue
            classified = True
            category, value = kind
            if category == "number":
                numbers[value] += 1
                after_number = part in _NUMBER_WORDS
            elif category == "negation":
                negations += 1
            elif category == "scale":
                scale, pole = _SCALES[part]
                poles.setdefault(scale, set()).add(pole)
                classified = False
            elif category == "date":
                dates.add(value)
            elif category == "unit":
                if value in {"celsius", "fahrenheit", "kelvin"} and units[-1:] == ["degree"]:
                    units.pop()
                units.append(value)
        is_name = (
            token[0].isupper()
            and match.start() not in starts
            and lower not in _NOT_NAMES
            and token not in _ROMAN
        ) or (len(token) > 1 and token.isupper())
        if is_name and not classified:
            names.update(parts)
    if units[-1:] == ["degree"]:
        units.pop()
    return PromptFacts(
        words=frozenset(words),
        quoted=quoted,
        payload=payload,
        code=frozenset(code),
        numbers=numbers,
        negations=negations,
        poles={scale: frozenset(values) for scale, values in poles.items()},
        languages=tuple(languages),
        units=tuple(units),
        dates=frozenset(dates),
        names=frozenset(names),
    )


def _negating_prefix_pair(first: frozenset[str], second: frozenset[str]) -> bool:
    """A word in one prompt that is another word of the other with a negating prefix."""
    stems = {_stem(word) for word in second}
    for word in first - second:
        for prefix in _NEGATING_PREFIXES:
            if word.startswith(prefix):
                base = word[len(prefix) :].lstrip("-")
                if len(base) >= 4 and (base in second or _stem(base) in stems):
                    return True
    return False


def _is_year(value: str) -> bool:
    try:
        number = float(value)
    except ValueError:
        return False
    return number.is_integer() and 1000 <= number <= 2199


def contrast(cached: str, new: str) -> str | None:
    """Why the answer to `cached` must not be served for `new` (one of `REASONS`), or None
    when the guard finds nothing they disagree on."""
    a, b = facts(cached), facts(new)
    if a.quoted != b.quoted or (
        a.payload is not None and b.payload is not None and a.payload != b.payload
    ):
        return "quoted"
    if a.code != b.code:
        return "code"
    if a.numbers != b.numbers:
        differing = (a.numbers - b.numbers) + (b.numbers - a.numbers)
        if all(_is_year(value) for value in differing) or (a.dates and b.dates):
            return "dates"
        return "numbers"
    if a.dates != b.dates:
        return "dates"
    if a.negations % 2 != b.negations % 2:
        return "negation"
    if _negating_prefix_pair(a.words, b.words) or _negating_prefix_pair(b.words, a.words):
        return "negation"
    for scale in a.poles.keys() & b.poles.keys():
        if a.poles[scale] != b.poles[scale]:
            return "antonyms"
    if set(a.languages) != set(b.languages):
        return "language"
    if a.units and b.units and set(a.units) != set(b.units):
        return "units"
    # The same two languages or units in the other order: "from English to Spanish".
    for first, second in ((a.languages, b.languages), (a.units, b.units)):
        if len(set(first)) > 1 and _dedupe(first) != _dedupe(second):
            return "antonyms"
    names_a = {name for name in a.names if name not in b.words}
    names_b = {name for name in b.names if name not in a.words}
    if names_a or names_b:
        return "entities"
    return None


def _dedupe(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


_JUDGE_INSTRUCTIONS = (
    "You decide whether two requests to an assistant ask for the same thing, so that one answer"
    " serves both. Any difference in numbers, dates, names, negation, direction, units, target"
    " language, code or quoted text makes them different. Reply with one word: yes or no."
)


def judge_verifier(chat: ChatFn, model: str) -> Verifier:
    """A `Verifier` that asks `model` (any chat model the gateway serves) whether the two
    prompts ask the same thing. Anything but an answer starting with "yes" is a no: a judge
    that rambles or fails must not make the cache serve."""

    async def verify(cached: str, new: str) -> bool:
        messages = [
            {"role": "system", "content": _JUDGE_INSTRUCTIONS},
            {"role": "user", "content": f"Request A: {cached}\nRequest B: {new}\nSame?"},
        ]
        answer = await chat(model, messages)
        return answer.strip().strip("*\"'.").lower().startswith("yes")

    return verify
