"""Refusals that name nobody, audited without letting anonymous clients grow the log.

A request refused before anyone is identified (no credential, an unknown or expired key, a key
used from outside its allow-list) is evidence worth keeping, but each such row costs its sender
nothing. So refusals are tallied per source, action and code in windows of `window_s`: the first
of a window is written as it happens, the rest are counted, and when the window ends one
summary row stands for them (`detail.count`, `first_seen`, `last_seen`). Every row carries
`detail.count`, so the rows of a source add up to the refusals it received. An IPv6 source is
its /64 (one host usually holds a whole /64). Memory is bounded: past `max_sources` sources in
open windows, refusals from new ones are only counted, in one row per action and code marked
`many_sources`.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keel.governance.audit_chain import format_at

__all__ = ["RefusalTally"]

# Distinct targets a summary names, to show what a source was after.
_SAMPLE_TARGETS = 3

Write = Callable[..., None]  # AuditLog.record's signature


@dataclass(slots=True)
class _Window:
    opened: float  # the clock's reading
    source: str | None
    action: str
    code: str | None
    outcome: str
    many_sources: bool = False
    count: int = 0  # refusals not written yet
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    targets: list[str] = field(default_factory=list)


class RefusalTally:
    """`add()` writes or counts one refusal through `write` (AuditLog.record's signature);
    `expire()` writes the summaries of windows that have ended, `close()` all of them. Safe
    from any thread."""

    def __init__(
        self,
        write: Write,
        *,
        window_s: float,
        max_sources: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self.window_s = window_s
        self._max_sources = max_sources
        self._clock = clock
        self._lock = threading.Lock()
        # Opened in time order, so the windows that end first are first.
        self._windows: dict[tuple[str | None, str, str | None], _Window] = {}
        self._overflow: dict[tuple[str, str | None], _Window] = {}

    def add(
        self,
        action: str,
        *,
        code: str | None,
        reason: str,
        target: str,
        outcome: str,
        source_ip: str | None,
    ) -> None:
        now = self._clock()
        source = _source(source_ip)
        with self._lock:
            ended = self._take_ended(now)
            key = (source, action, code)
            window = self._windows.get(key)
            first = window is None
            if window is None:
                if len(self._windows) >= self._max_sources:
                    window = self._overflow.get((action, code))
                    if window is None:
                        window = _Window(now, None, action, code, outcome, many_sources=True)
                        self._overflow[(action, code)] = window
                    _count(window, target)
                    first = False
                else:
                    self._windows[key] = _Window(now, source, action, code, outcome)
            else:
                _count(window, target)
        for summary in ended:
            self._summarize(summary)
        if first:
            self._write(
                action,
                actor=None,
                target=target,
                outcome=outcome,
                detail={"code": code, "reason": reason, "count": 1},
                source_ip=source_ip,
            )

    def seconds_to_next_end(self) -> float | None:
        """How long until the oldest open window ends; None when none is open."""
        with self._lock:
            opened = [
                next(iter(windows.values())).opened
                for windows in (self._windows, self._overflow)
                if windows
            ]
        if not opened:
            return None
        return max(min(opened) + self.window_s - self._clock(), 0.0)

    def expire(self) -> None:
        with self._lock:
            ended = self._take_ended(self._clock())
        for window in ended:
            self._summarize(window)

    def close(self) -> None:
        with self._lock:
            ended = [*self._windows.values(), *self._overflow.values()]
            self._windows.clear()
            self._overflow.clear()
        for window in ended:
            self._summarize(window)

    def _take_ended(self, now: float) -> list[_Window]:
        return [
            *_pop_ended(self._windows, now, self.window_s),
            *_pop_ended(self._overflow, now, self.window_s),
        ]

    def _summarize(self, window: _Window) -> None:
        if not window.count:
            return
        assert window.first_seen is not None and window.last_seen is not None
        detail: dict[str, Any] = {
            "code": window.code,
            "count": window.count,
            "first_seen": format_at(window.first_seen),
            "last_seen": format_at(window.last_seen),
            "window_s": self.window_s,
            "targets": window.targets,
        }
        if window.many_sources:
            detail["many_sources"] = True
        self._write(
            window.action,
            actor=None,
            target=None,
            outcome=window.outcome,
            detail=detail,
            source_ip=window.source,
        )


def _pop_ended(windows: dict[Any, _Window], now: float, window_s: float) -> list[_Window]:
    ended: list[_Window] = []
    while windows:
        key, window = next(iter(windows.items()))
        if now - window.opened < window_s:
            break
        del windows[key]
        ended.append(window)
    return ended


def _count(window: _Window, target: str) -> None:
    seen = datetime.now(UTC)
    window.count += 1
    window.first_seen = window.first_seen or seen
    window.last_seen = seen
    if len(window.targets) < _SAMPLE_TARGETS and target not in window.targets:
        window.targets.append(target)


def _source(source_ip: str | None) -> str | None:
    """The key a source is tallied under: an IPv4 address as it is, an IPv6 address's /64."""
    if source_ip is None or ":" not in source_ip:
        return source_ip
    try:
        return str(ipaddress.IPv6Network(f"{source_ip}/64", strict=False))
    except ValueError:
        return source_ip
