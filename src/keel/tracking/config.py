"""The `tracking` section of keel.yaml: where run artifacts go and when a silent run is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ArtifactStoreConfig", "TrackingConfig"]


class _Section(BaseModel):
    # keel.config imports this module, so it cannot import keel.config's base: the same rule.
    model_config = ConfigDict(extra="forbid")


class ArtifactStoreConfig(_Section):
    """Run artifacts: files under `home` by default, or an S3-compatible bucket. S3
    credentials come from the usual AWS variables and files (boto3's chain), never from here."""

    kind: Literal["local", "s3"] = Field(default="local", description="local or s3.")
    path: Path | None = Field(
        default=None, description="Local store directory (default: <home>/artifacts)."
    )
    bucket: str | None = Field(default=None, min_length=3, max_length=63)
    prefix: str = Field(default="keel-artifacts", max_length=200)
    endpoint_url: str | None = Field(
        default=None, description="An S3-compatible endpoint (MinIO, Ceph, ...); None: AWS."
    )
    region: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> ArtifactStoreConfig:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("bucket: the s3 artifact store needs a bucket")
        return self


class TrackingConfig(_Section):
    """Experiment tracking."""

    artifacts: ArtifactStoreConfig = Field(default_factory=ArtifactStoreConfig)
    heartbeat_interval_s: float = Field(
        default=15.0, gt=0, le=3600, description="How often a live run says it is alive."
    )
    stale_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A running run silent this long is marked failed (lost) when next read.",
    )
