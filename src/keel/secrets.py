"""The values Keel must never repeat: configured credentials, every configured upstream header
value and every `${VAR}` substituted into the configuration.

Upstreams echo what they were sent (a refused key, a custom auth header) in their error bodies,
and those bodies travel into error responses, request records, audit entries, logs and the
CLI. Rather than trusting each of those places to know which header names are secret, every
value the operator configured is registered here once, and `redact` blanks it wherever text
leaves Keel: `KeelError` redacts its message when it is made, and `RedactingFilter` redacts
log records.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

__all__ = ["REDACTED", "RedactingFilter", "forget_all", "guard_loggers", "redact", "register"]

REDACTED = "[redacted]"
# Shorter values are not credentials, and blanking them ("true", "443", "v1") would garble
# ordinary messages.
MIN_SECRET_LENGTH = 6

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register(values: Iterable[str | None]) -> None:
    """Remember `values` as secrets for the life of the process. A header value with a scheme
    (`Bearer sk-...`) is registered whole and without the scheme."""
    global _pattern
    found: set[str] = set()
    for value in values:
        if not value:
            continue
        found.add(value)
        _, _, token = value.partition(" ")
        if token:
            found.add(token)
    found = {value for value in found if len(value) >= MIN_SECRET_LENGTH}
    with _lock:
        if found <= _secrets:
            return
        _secrets.update(found)
        # Longest first, so a value that contains another is blanked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(value) for value in ordered))


def redact(text: str) -> str:
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


def forget_all() -> None:
    """For tests that need a clean slate."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


class RedactingFilter(logging.Filter):
    """Blanks registered secrets in a log record's message and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is None:
            return True
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatted once here, redacted, and cached where formatters look for it.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
            record.exc_info = None
        return True


_FILTER = RedactingFilter()


def guard_loggers() -> None:
    """Put the redacting filter on every `keel.*` logger (a logger's filters see the records
    it creates; its handlers may belong to anyone)."""
    manager = logging.Logger.manager
    for name in ["keel", *list(manager.loggerDict)]:
        if name == "keel" or name.startswith("keel."):
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
