"""The `tracing:` settings section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["OtlpConfig", "TracingConfig"]


class _Section(BaseModel):
    # keel.config imports this module, so it cannot import keel.config's base: the same rule.
    model_config = ConfigDict(extra="forbid")


class OtlpConfig(_Section):
    endpoint: str | None = Field(
        default=None,
        description="Where to export spans over OTLP: for `http`, the full URL of the traces "
        "endpoint (`http://collector:4318/v1/traces`); for `grpc`, `host:port` or "
        "`http://host:port`. Unset: no export.",
    )
    protocol: Literal["http", "grpc"] = "http"
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Sent with every export (a collector's API key, say); kept out of logs.",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_queue_size: int = Field(
        default=2048,
        ge=1,
        description="Spans waiting for export; beyond it new spans are dropped, never waited "
        "for, so a slow or dead collector cannot slow a request.",
    )
    service_name: str = Field(default="keel", min_length=1, max_length=255)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            return None
        if any(character.isspace() for character in value):
            raise ValueError("must not contain spaces")
        return value

    @model_validator(mode="after")
    def _endpoint_fits_protocol(self) -> OtlpConfig:
        endpoint = self.endpoint
        if endpoint is None:
            return self
        has_scheme = endpoint.startswith(("http://", "https://"))
        if self.protocol == "http" and not has_scheme:
            raise ValueError(
                f"endpoint: {endpoint!r} is not a URL; OTLP over HTTP needs the full traces "
                "URL, like http://collector:4318/v1/traces"
            )
        if self.protocol == "grpc" and "/" in endpoint.split("://", 1)[-1].rstrip("/"):
            raise ValueError(
                f"endpoint: {endpoint!r} has a path; OTLP over gRPC needs host:port, like "
                "collector:4317"
            )
        return self


class TracingConfig(_Section):
    enabled: bool = Field(
        default=True,
        description="Keep the spans of every gateway call in Keel's database, for "
        "`GET /v1/keel/requests/{id}/trace` and `keel trace`.",
    )
    retention_days: float = Field(default=14, gt=0, le=3650)
    sweep_interval_s: float = Field(
        default=3600, gt=0, description="How often spans older than `retention_days` go."
    )
    max_pending: int = Field(
        default=20000,
        ge=1,
        description="Calls waiting for their spans to be written; beyond it, spans are dropped.",
    )
    capture_content: bool = Field(
        default=False,
        description="Put the messages and answers on spans (masked by the PII store policy).",
    )
    otlp: OtlpConfig = Field(default_factory=OtlpConfig)
