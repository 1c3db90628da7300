"""The `drift:` settings section: opt-in payload capture and how drift is computed."""

from __future__ import annotations

from pydantic import Field

from keel.config import _Section

__all__ = ["DriftConfig"]


class DriftConfig(_Section):
    """Payload capture (prompt and answer text, masked, with embeddings) and drift reports."""

    capture: bool = Field(
        default=False,
        description="Store the prompt and answer text of calls (PII masked) for drift and "
        "datasets. Off by default: nothing about a call's content is kept.",
    )
    models: list[str] = Field(
        default_factory=list,
        description="Capture only these: gateway model ids, group ids or registry model names. "
        "Empty: every model.",
    )
    embed: bool = Field(
        default=True, description="Embed captured text, for embedding drift (in the background)."
    )
    embedding_model: str = Field(
        default="all-minilm-l6-v2", description="The embedding model, called through the router."
    )
    max_text_chars: int = Field(
        default=8000, ge=1, description="Captured text beyond this many characters is cut."
    )
    batch_size: int = Field(default=64, ge=1, description="Payloads embedded and written at once.")
    flush_interval_s: float = Field(
        default=1.0, gt=0, description="Longest wait before a partial batch is written."
    )
    max_pending: int = Field(
        default=10000,
        ge=1,
        description="Payloads queued at most; beyond it new ones are skipped (and counted) "
        "rather than let memory grow while the embedding model catches up.",
    )
    embedding_sample: int = Field(
        default=1000,
        ge=50,
        description="Embeddings per side a drift report compares (a seeded uniform sample).",
    )
    permutations: int = Field(
        default=200, ge=200, description="Permutations of the MMD test (at least 200)."
    )
