"""Opt-in payload capture: the prompt and answer text of calls, PII masked, with embeddings.

The observer runs on the request path, so it only decides (from settings read once) and
appends a reference to the parsed request and answer to a queue; with capture off for a model
it does nothing else at all. A background batch writer then, per batch: extracts the texts,
masks them under the `pii.store` policy (in a worker thread), embeds them with
`drift.embedding_model` through the router (retries and fallbacks apply), and inserts the rows
into `request_payloads`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel
from sqlalchemy import insert

from keel.errors import ConfigError, KeelError
from keel.gateway.call import Call
from keel.monitoring.payload_tables import request_payloads
from keel.routing import AttemptTrace, Router
from keel.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from keel.store.batching import BatchWriter
from keel.store.database import Database

if TYPE_CHECKING:
    from keel.governance.guardrails import Guardrails
    from keel.monitoring.drift_config import DriftConfig

__all__ = ["RUN_HEADER", "PayloadCapture", "vector_bytes", "vector_of"]

log = logging.getLogger("keel.monitoring")

# A benchmark run's requests carry this header; drift's "benchmark" reference reads them back.
RUN_HEADER = "x-keel-run-id"


def vector_bytes(vector: Any) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def vector_of(blob: bytes) -> Any:
    return np.frombuffer(blob, dtype="<f4")


@dataclass(slots=True)
class _Pending:
    request_id: str
    created_at: datetime
    model: str | None
    registry_version: str | None
    run_id: str | None
    request: BaseModel
    response: dict[str, Any] | None
    row: dict[str, Any] | None = None  # filled in the background, once


class PayloadCapture(BatchWriter[_Pending]):
    _task_name = "keel-payload-capture"
    _noun = "captured payloads"
    _log = log

    def __init__(
        self,
        config: DriftConfig,
        database: Database,
        router: Router,
        guardrails: Guardrails,
    ) -> None:
        super().__init__(batch_size=config.batch_size, flush_interval_s=config.flush_interval_s)
        self._config = config
        self._database = database
        self._router = router
        self._guardrails = guardrails
        self._models = frozenset(config.models)
        self.skipped = 0  # calls not captured because the queue was full
        if config.embed:
            try:
                router.resolve(config.embedding_model, "embeddings")
            except KeelError as exc:
                raise ConfigError(f"drift.embedding_model: {exc.message}") from None

    # -- on the request path ------------------------------------------------------------------

    def observe(self, call: Call, record: dict[str, Any]) -> None:
        """The `CallObserver`: queue the call's payload if capture applies to it."""
        if not self._config.capture or call.request is None:
            return
        run_id = call.request_headers.get(RUN_HEADER) if call.request_headers else None
        if not (run_id or self._wanted(call)):
            return
        if isinstance(call.request, EmbeddingRequest):
            return
        if self.pending >= self._config.max_pending:
            self.skipped += 1
            return
        self._enqueue(
            _Pending(
                request_id=call.request_id,
                created_at=call.created_at,
                model=record.get("model_requested"),
                registry_version=record.get("registry_version"),
                run_id=run_id[:255] if run_id else None,
                request=call.request,
                response=call.response,
            )
        )

    def _wanted(self, call: Call) -> bool:
        if not self._models:
            return True
        names = {call.model_requested, call.group}
        if call.registry_version:
            names.add(call.registry_version.partition("@")[0])
        if call.model_requested:
            names.add(call.model_requested.partition("@")[0])
        return not self._models.isdisjoint(names)

    # -- in the background --------------------------------------------------------------------

    async def _write(self, batch: list[_Pending]) -> list[_Pending]:
        fresh = [item for item in batch if item.row is None]
        if fresh:
            try:
                rows = await asyncio.to_thread(self._rows, fresh)
                if self._config.embed:
                    await self._embed(rows)
            except Exception:
                log.exception("preparing %d captured payloads failed; skipped", len(fresh))
                self.dropped += len(fresh)
                batch = [item for item in batch if item.row is not None]
            else:
                for item, row in zip(fresh, rows, strict=True):
                    item.row = row
        if not batch:
            return []
        return await super()._write(batch)

    def _rows(self, items: list[_Pending]) -> list[dict[str, Any]]:
        limit = self._config.max_text_chars
        mask = self._guardrails.mask_for_storage
        rows = []
        for item in items:
            input_text = _clean(_input_text(item.request), limit)
            output_text, finish_reason = _output_of(item.response)
            output_text = _clean(output_text, limit)
            rows.append(
                {
                    "request_id": item.request_id,
                    "created_at": item.created_at,
                    "model": _clean(item.model, 255),
                    "registry_version": item.registry_version,
                    "input_text": mask(input_text) if input_text else input_text,
                    "output_text": mask(output_text) if output_text else output_text,
                    "input_embedding": None,
                    "output_embedding": None,
                    "run_id": item.run_id,
                    "finish_reason": _clean(finish_reason, 32),
                }
            )
        return rows

    async def _embed(self, rows: list[dict[str, Any]]) -> None:
        """Embed every non-empty text of the batch in one call. The masked text is what is
        embedded: what is stored and what its vector describes stay the same text."""
        wanted = [
            (row, column, row[text])
            for row in rows
            for text, column in (
                ("input_text", "input_embedding"),
                ("output_text", "output_embedding"),
            )
            if row[text]
        ]
        if not wanted:
            return
        model = self._config.embedding_model
        try:
            group = self._router.resolve(model, "embeddings")
            request = EmbeddingRequest(
                model=model, input=[text for _, _, text in wanted], encoding_format="base64"
            )
            response = await self._router.execute(
                group, lambda provider: provider.embed(request), AttemptTrace()
            )
        except Exception as exc:
            # Text without vectors still serves datasets and the other drift checks.
            log.warning("embedding %d captured texts failed: %s", len(wanted), exc)
            return
        vectors = sorted(response["data"], key=lambda item: item["index"])
        for (row, column, _), item in zip(wanted, vectors, strict=True):
            embedding = item["embedding"]
            row[column] = (
                base64.b64decode(embedding)
                if isinstance(embedding, str)
                else vector_bytes(embedding)
            )

    def _write_batch(self, items: list[_Pending]) -> None:
        rows = [item.row for item in items if item.row is not None]
        with self._database.engine.begin() as connection:
            connection.execute(insert(request_payloads), rows)

    def _report_dropped(self, item: _Pending, error: Exception) -> None:
        log.error("dropped captured payload %s: %s", item.request_id, type(error).__name__)

    async def stop(self) -> None:
        await super().stop()
        if self._queue:
            log.error("payload capture stopped with %d payloads unwritten", len(self._queue))


def _clean(text: str | None, limit: int) -> str | None:
    return None if text is None else text.replace("\x00", "")[:limit]


def _input_text(request: BaseModel) -> str | None:
    if isinstance(request, ChatCompletionRequest):
        parts = [_content_text(message.content) for message in request.messages]
        return "\n".join(part for part in parts if part) or None
    if isinstance(request, CompletionRequest):
        prompt = request.prompt
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and all(isinstance(item, str) for item in prompt):
            return "\n".join(str(item) for item in prompt)
    return None  # token ids: nothing to read


def _content_text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    texts = []
    for part in content:
        text = getattr(part, "text", None)
        if text is None and isinstance(part, dict):
            text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
    return "".join(texts) or None


def _output_of(response: dict[str, Any] | None) -> tuple[str | None, str | None]:
    if not response:
        return None, None
    choices = response.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None, None
    choice = choices[0]
    reason = choice.get("finish_reason")
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return (text if isinstance(text, str) else None), (reason if isinstance(reason, str) else None)
