"""Guardrails on a streamed answer, for the gateway's relay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.gateway.call import Call
    from keel.governance.guardrails import Guardrails, Screening, StreamRestorer

__all__ = ["StreamScreen"]


class StreamScreen:
    """Guardrails on a streamed answer: pseudonyms restored chunk by chunk (each choice has its
    own restorer, holding back what may be the start of a placeholder), and the output rules
    run on the whole text once it has been sent."""

    def __init__(self, guardrails: Guardrails, screening: Screening) -> None:
        self.guardrails = guardrails
        self.screening = screening
        self.restorers: dict[int, StreamRestorer] = {}
        self.text: dict[int, list[str]] = {}
        self.template: dict[str, Any] | None = None
        self.key = "content"

    @classmethod
    def open(cls, guardrails: Guardrails | None, call: Call) -> StreamScreen | None:
        if guardrails is None or call.screening is None:
            return None
        return cls(guardrails, call.screening)

    def restore(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            holder, key = _text_holder(choice)
            if holder is None:
                continue
            self.key = key
            self.template = chunk
            restorer = self.restorers.get(index)
            if restorer is None:
                restorer = self.restorers[index] = self.guardrails.stream_restorer(self.screening)
            text = restorer.feed(holder.get(key) or "")
            if choice.get("finish_reason") is not None:
                text += restorer.flush()
                del self.restorers[index]
            holder[key] = text
            self.text.setdefault(index, []).append(text)

    def finish(self) -> dict[str, Any] | None:
        """A last chunk with what restorers still hold when the stream ended without a
        finish reason."""
        pending = {index: r.flush() for index, r in self.restorers.items()}
        self.restorers.clear()
        pending = {index: text for index, text in pending.items() if text}
        if not pending or self.template is None:
            return None
        chunk = {key: value for key, value in self.template.items() if key != "usage"}
        choices = []
        for index, text in pending.items():
            self.text.setdefault(index, []).append(text)
            if self.key == "text":
                choices.append({"index": index, "text": text, "finish_reason": None})
            else:
                choices.append({"index": index, "delta": {"content": text}, "finish_reason": None})
        chunk["choices"] = choices
        return chunk

    async def check_output(self) -> None:
        full = "".join("".join(parts) for _, parts in sorted(self.text.items()))
        await self.guardrails.screen_streamed_output(self.screening, full)


def _text_holder(choice: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    if "text" in choice:
        return choice, "text"
    delta = choice.get("delta")
    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
        return delta, "content"
    return None, "content"
