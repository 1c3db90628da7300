"""Putting pseudonymized values back into a streamed answer, chunk by chunk.

A placeholder can arrive split across chunks ("<EMAIL_" then "ADDRESS_1>"), so the restorer
holds back a tail that could still become one, and lets it go as soon as it cannot.
"""

from __future__ import annotations

from keel.governance.guardrails.pseudonyms import Pseudonyms

__all__ = ["StreamRestorer"]


class StreamRestorer:
    """Use one per streamed choice (and one per tool call's arguments, if needed)."""

    def __init__(self, pseudonyms: Pseudonyms) -> None:
        self._pseudonyms = pseudonyms
        self._held = ""

    def feed(self, text: str) -> str:
        """The text that is safe to send now, placeholders restored."""
        if not self._pseudonyms:
            return text
        text = self._held + text
        self._held = ""
        # Placeholders hold no "<", so only the last one can be unfinished.
        cut = text.rfind("<")
        if cut != -1 and self._pseudonyms.could_start_placeholder(text[cut:]):
            self._held = text[cut:]
            text = text[:cut]
        return self._pseudonyms.restore(text)

    def flush(self) -> str:
        """What is still held back, at the end of the stream."""
        rest, self._held = self._held, ""
        return self._pseudonyms.restore(rest)
