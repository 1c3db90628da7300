"""Chat log-probabilities for llama.cpp models, noted token by token as they are sampled.

llama-cpp-python can report log-probabilities itself, but only for a model created with
`logits_all` (n_ctx x vocabulary floats kept in memory, the output layer computed for every
prompt token), and its chat form loses what it cannot decode token by token: a token that is
part of a multi-byte character reads as "" and, streamed, that character disappears from the
text. So Keel notes, when a request asks for them, each sampled token and the distribution it was
drawn from, straight from the context's logits for the position being sampled: no extra memory,
exact token bytes, and the text left to llama-cpp-python's own, correct, decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ["SampleLog", "recording_llama_class"]


@dataclass
class _Sample:
    piece: bytes
    logprob: float
    alternatives: list[tuple[bytes, float]]  # the likeliest tokens, likeliest first


@dataclass
class SampleLog:
    """What a model's generations sampled, while a request that wants log-probabilities runs.

    Used from the model's worker thread only, like the model itself.
    """

    samples: list[_Sample] | None = None  # None: not recording
    top: int = 0
    # Counted for every generation: what a stream's usage is made of (llama.cpp reports none).
    sampled: int = 0
    last_token: int = -1
    _taken: int = field(default=0, repr=False)
    _text_bytes: int = field(default=0, repr=False)

    @contextmanager
    def recording(self, active: bool, top: int) -> Iterator[None]:
        """Note the samples of one generation (one choice) when `active`."""
        if not active:
            yield
            return
        self.samples, self.top, self._taken, self._text_bytes = [], top, 0, 0
        try:
            yield
        finally:
            self.samples = None

    def record(self, token: int, logits: Any, piece: Any) -> None:
        """Called by the model right after it samples `token` from `logits`."""
        import numpy as np

        if self.samples is None:
            return
        values = np.asarray(logits, dtype=np.float64)
        shifted = values - values.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        alternatives: list[tuple[bytes, float]] = []
        if self.top:
            likeliest = np.argpartition(-logprobs, self.top)[: self.top]
            for index in sorted(likeliest.tolist(), key=lambda i: -logprobs[i]):
                alternatives.append((piece(index), float(logprobs[index])))
        self.samples.append(_Sample(piece(token), float(logprobs[token]), alternatives))

    def content_for(self, text: str) -> list[dict[str, Any]] | None:
        """OpenAI's `logprobs.content` entries for the next `text` the generation put out.

        Pieces are matched to the text by their bytes, so tokens never shown (the end-of-turn
        token, what a stop sequence cut off) get no entry.
        """
        if self.samples is None:
            return None
        self._text_bytes += len(text.encode())
        entries = []
        while self._taken < len(self.samples):
            sample = self.samples[self._taken]
            if len(sample.piece) > self._text_bytes:
                break
            self._taken += 1
            if not sample.piece:
                continue  # shows nothing: the end-of-turn token
            self._text_bytes -= len(sample.piece)
            entries.append(
                {
                    **_token(sample.piece, sample.logprob),
                    "top_logprobs": [_token(p, lp) for p, lp in sample.alternatives],
                }
            )
        return entries


def _token(piece: bytes, logprob: float) -> dict[str, Any]:
    # A piece that is part of a multi-byte character shows its bytes escaped, as OpenAI does.
    return {
        "token": piece.decode("utf-8", errors="backslashreplace"),
        "logprob": logprob,
        "bytes": list(piece),
    }


@cache
def recording_llama_class() -> type[Llama]:
    """`llama_cpp.Llama`, counting every sampled token in the instance's `sample_log`, and
    noting it with its log-probabilities while the log records."""
    import llama_cpp
    import numpy as np

    class RecordingLlama(llama_cpp.Llama):
        def __init__(self, *args: Any, sample_log: SampleLog, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.sample_log = sample_log

        def sample(self, *args: Any, **kwargs: Any) -> int:
            token: int = super().sample(*args, **kwargs)
            self.sample_log.sampled += 1
            self.sample_log.last_token = token
            if self.sample_log.samples is not None:
                # The row `sample` read: the position being sampled (the last one evaluated).
                idx = kwargs.get("idx")
                row = idx - self.n_tokens if idx is not None else -1
                pointer = llama_cpp.llama_get_logits_ith(self.ctx, row)
                logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab(),))
                self.sample_log.record(token, logits, lambda t: self.detokenize([t]))
            return token

    return RecordingLlama
