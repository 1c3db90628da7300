"""Guardrails on a streamed answer, for the gateway's relay."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from keel.governance.guardrails.pseudonyms import Pseudonyms
from keel.governance.guardrails.streaming import StreamRestorer

if TYPE_CHECKING:
    from keel.gateway.call import Call
    from keel.governance.guardrails import Guardrails, Screening

__all__ = ["StreamScreen"]


class StreamScreen:
    """Guardrails on a streamed answer: pseudonyms restored chunk by chunk, and the output
    rules run on the whole text once it has been sent.

    Each choice's text has its own restorer, and so do the arguments of each of its tool calls
    (their originals escaped for a JSON string, as for an answer that is not streamed); each
    holds back what may be the start of a placeholder until the next chunk or the choice's
    finish reason, whose chunk carries what they still held."""

    def __init__(self, guardrails: Guardrails, screening: Screening) -> None:
        self.guardrails = guardrails
        self.screening = screening
        self.restorers: dict[int, StreamRestorer] = {}
        # (choice index, tool call index) -> the restorer of that call's arguments.
        self.argument_restorers: dict[tuple[int, int], StreamRestorer] = {}
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
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            holder, key = _text_holder(choice)
            if holder is not None:
                self.key = key
                self.template = chunk
                restorer = self.restorers.get(index)
                if restorer is None:
                    restorer = self.restorers[index] = self.guardrails.stream_restorer(
                        self.screening
                    )
                text = restorer.feed(holder.get(key) or "")
                holder[key] = text
                self.text.setdefault(index, []).append(text)
            for call_index, function in _argument_holders(choice):
                self.template = chunk
                found = self.argument_restorers.get((index, call_index))
                if found is None:
                    found = self.argument_restorers[(index, call_index)] = StreamRestorer(
                        _InJson(self.screening.pseudonyms)
                    )
                function["arguments"] = found.feed(function["arguments"])
            if choice.get("finish_reason") is not None:
                self._flush_into(choice, index)

    def finish(self) -> dict[str, Any] | None:
        """A last chunk with what restorers still hold when the stream ended without a
        finish reason."""
        texts = {index: restorer.flush() for index, restorer in self.restorers.items()}
        arguments = {key: restorer.flush() for key, restorer in self.argument_restorers.items()}
        self.restorers.clear()
        self.argument_restorers.clear()
        if self.template is None:
            return None
        choices: dict[int, dict[str, Any]] = {}
        for index, text in texts.items():
            if not text:
                continue
            self.text.setdefault(index, []).append(text)
            if self.key == "text":
                choices[index] = {"index": index, "text": text}
            else:
                choices[index] = {"index": index, "delta": {"content": text}}
        for (index, call_index), held in sorted(arguments.items()):
            if not held:
                continue
            choice = choices.setdefault(index, {"index": index, "delta": {}})
            calls = choice["delta"].setdefault("tool_calls", [])
            calls.append({"index": call_index, "function": {"arguments": held}})
        if not choices:
            return None
        chunk = {key: value for key, value in self.template.items() if key != "usage"}
        chunk["choices"] = [choices[index] | {"finish_reason": None} for index in sorted(choices)]
        return chunk

    async def check_output(self) -> None:
        full = "".join("".join(parts) for _, parts in sorted(self.text.items()))
        await self.guardrails.screen_streamed_output(self.screening, full)

    def _flush_into(self, choice: dict[str, Any], index: int) -> None:
        """Puts what the choice's restorers still hold into its finishing chunk."""
        restorer = self.restorers.pop(index, None)
        rest = restorer.flush() if restorer is not None else ""
        if rest:
            self.text.setdefault(index, []).append(rest)
            if self.key == "text":
                choice["text"] = (choice.get("text") or "") + rest
            else:
                delta = _delta(choice)
                delta["content"] = (delta.get("content") or "") + rest
        for key in sorted(k for k in self.argument_restorers if k[0] == index):
            held = self.argument_restorers.pop(key).flush()
            if not held:
                continue
            call_index = key[1]
            delta = _delta(choice)
            calls = delta.get("tool_calls")
            if not isinstance(calls, list):
                calls = delta["tool_calls"] = []
            for found, function in _argument_holders(choice):
                if found == call_index:
                    function["arguments"] += held
                    break
            else:
                calls.append({"index": call_index, "function": {"arguments": held}})


class _InJson(Pseudonyms):
    """A request's pseudonyms, restored for a JSON string (tool-call arguments): a view that
    keeps no state of its own, so placeholders made later still count."""

    def __init__(self, pseudonyms: Pseudonyms) -> None:  # no super().__init__(): a view
        self._of = pseudonyms

    def restore(self, text: str) -> str:
        return self._of.restore_in_json(text)

    def could_start_placeholder(self, tail: str) -> bool:
        return self._of.could_start_placeholder(tail)

    def __getitem__(self, placeholder: str) -> str:
        return self._of[placeholder]

    def __iter__(self) -> Iterator[str]:
        return iter(self._of)

    def __len__(self) -> int:
        return len(self._of)


def _text_holder(choice: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    if "text" in choice:
        return choice, "text"
    delta = choice.get("delta")
    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
        return delta, "content"
    return None, "content"


def _argument_holders(choice: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(tool call index, its `function`) for each streamed tool call with an arguments
    string."""
    delta = choice.get("delta")
    calls = delta.get("tool_calls") if isinstance(delta, dict) else None
    if not isinstance(calls, list):
        return
    for position, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            index = call.get("index")
            yield (index if isinstance(index, int) else position), function


def _delta(choice: dict[str, Any]) -> dict[str, Any]:
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        delta = choice["delta"] = {}
    return delta
