"""The `alerts:` section of keel.yaml: rules, notifiers and how often they are evaluated.

A rule watches one series from the catalog below (`METRICS`), over a window, and fires when
its condition holds for `for`. Rules created over REST are validated by the same model, so a
rule is refused the same way wherever it comes from. Notifiers exist in keel.yaml only: their
secrets are references to environment variables, never values.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "METRICS",
    "AlertRuleConfig",
    "AlertsConfig",
    "JiraNotifierConfig",
    "MetricInfo",
    "NotifierConfig",
    "SlackNotifierConfig",
    "WebhookNotifierConfig",
    "parse_duration",
]


class _Section(BaseModel):
    # keel.config imports this module, so its own `_Section` cannot be imported here: the same
    # rule (unknown fields are mistakes) is restated.
    model_config = ConfigDict(extra="forbid")


class MetricInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Literal["requests", "quality", "drift"]
    unit: str
    description: str


def _requests(unit: str, description: str) -> MetricInfo:
    return MetricInfo(source="requests", unit=unit, description=description)


def _quality(field: str) -> MetricInfo:
    return MetricInfo(source="quality", unit="ratio", description=f"{field} of labelled feedback")


# What a rule may watch. Request series read `request_records` (shared by every replica);
# quality and drift series need a `model`.
METRICS: dict[str, MetricInfo] = {
    "request_count": _requests("requests", "requests in the window"),
    "error_count": _requests("requests", "requests answered with a status >= 400 (not 499)"),
    "error_rate": _requests("ratio", "error_count / request_count"),
    "server_error_rate": _requests("ratio", "share of requests answered with a status >= 500"),
    "latency_p50_seconds": _requests("seconds", "median latency (nearest rank)"),
    "latency_p95_seconds": _requests("seconds", "95th percentile latency (nearest rank)"),
    "latency_p99_seconds": _requests("seconds", "99th percentile latency (nearest rank)"),
    "ttft_p95_seconds": _requests("seconds", "95th percentile time to first token (streams)"),
    "cost_usd": _requests("usd", "total cost"),
    "input_tokens": _requests("tokens", "total prompt tokens"),
    "output_tokens": _requests("tokens", "total completion tokens"),
    "total_tokens": _requests("tokens", "prompt + completion tokens"),
    "cache_hit_rate": _requests("ratio", "hits / (hits + misses) of cacheable requests"),
    "quota_rejections": _requests("requests", "requests refused by a Keel quota (429)"),
    "quality_count": MetricInfo(
        source="quality", unit="labels", description="labelled feedback in the window"
    ),
    "quality_accuracy": _quality("accuracy"),
    "quality_precision_macro": _quality("macro precision"),
    "quality_recall_macro": _quality("macro recall"),
    "quality_f1_macro": _quality("macro F1"),
    "drift_detected": MetricInfo(
        source="drift", unit="flag", description="1 when the latest drift check drifted, else 0"
    ),
}
# `drift.<field>`: any numeric field of the latest drift result (`drift.psi`, ...).
DRIFT_FIELD = re.compile(r"drift\.[a-z][a-z0-9_]{0,63}")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION_S = 366 * 86400
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `1h`, `2d`, `500ms` or a number of seconds, as seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 30s, 5m, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        found = _DURATION.fullmatch(value)
        if found is None:
            raise ValueError(f"{value[:40]!r} is not a duration like 30s, 5m, 1h or 2d")
        seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2) or "s"]
    else:
        raise ValueError("a duration is a number of seconds or text like 30s, 5m, 1h")
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DURATION_S:
        raise ValueError(f"a duration is 0 to {MAX_DURATION_S} seconds")
    return seconds


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("text cannot contain NUL characters")
    return value


Operator = Literal[">", ">=", "<", "<="]
Condition = Literal["threshold", "rate_of_change", "anomaly"]
Severity = Literal["info", "warning", "critical"]


class AlertRuleConfig(_Section):
    """One alert rule: `metric` over `window` compared with `threshold` (see `condition`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(description="Unique name: letters, digits, `_ . : -`, up to 128.")
    metric: str = Field(description="A series from the catalog (docs/monitoring.md).")
    condition: Condition = "threshold"
    op: Operator = ">"
    threshold: float = Field(allow_inf_nan=False)
    window: float = Field(default=300.0, description="Seconds, or text like 5m.")
    for_: float = Field(default=0.0, alias="for", description="How long before firing.")
    baseline_windows: int = Field(default=12, ge=2, le=200)
    severity: Severity = "warning"
    model: str | None = Field(default=None, max_length=255)
    deployment: str | None = Field(default=None, max_length=255)
    team: str | None = Field(default=None, max_length=128)
    environment: str | None = Field(default=None, max_length=16)
    notifiers: list[str] | None = Field(
        default=None, description="Notifier names; none given: every configured notifier."
    )
    recipients: list[str] = Field(default_factory=list, max_length=50)
    description: str | None = Field(default=None, max_length=2000)
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                "a rule name is 1 to 128 letters, digits or `_ . : -`, starting with a letter "
                "or digit"
            )
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value in METRICS or DRIFT_FIELD.fullmatch(value):
            return value
        from keel.config import did_you_mean

        raise ValueError(
            f"unknown metric {value[:80]!r}{did_you_mean(value, METRICS)}; known: "
            f"{', '.join(METRICS)}, or drift.<field>"
        )

    @field_validator("window", "for_", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("window")
    @classmethod
    def _positive_window(cls, value: float) -> float:
        if value < 1:
            raise ValueError("the window is at least 1 second")
        return value

    @field_validator("model", "deployment", "team", "environment", "description")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return _no_nul(value)

    @field_validator("recipients", "notifiers")
    @classmethod
    def _storable_items(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            if not item or len(item) > 255:
                raise ValueError("each item is 1 to 255 characters")
            _no_nul(item)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AlertRuleConfig:
        source = self.source
        if source in ("quality", "drift") and self.model is None:
            raise ValueError(f"model: {source} metrics are per model; name the model")
        if source == "drift" and self.condition != "threshold":
            raise ValueError(
                "condition: drift metrics are the latest check only; use condition threshold"
            )
        if source != "requests" and (self.deployment or self.team or self.environment):
            raise ValueError(f"{source} metrics filter on model only")
        return self

    @property
    def source(self) -> str:
        info = METRICS.get(self.metric)
        return info.source if info is not None else "drift"

    def document(self) -> dict[str, Any]:
        """The rule as stored and answered (JSON, `for` under its own name)."""
        return self.model_dump(mode="json", by_alias=True)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value[:60]!r} is not an http(s) URL")
    return value


class _Delivery(_Section):
    name: str
    url: str
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_attempts: int = Field(default=3, ge=1, le=10)
    backoff_initial_s: float = Field(default=0.5, ge=0, le=60)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return _http_url(value)


class SlackNotifierConfig(_Delivery):
    """A Slack (or Slack-compatible: Mattermost, Rocket.Chat) incoming webhook."""

    type: Literal["slack"]


class WebhookNotifierConfig(_Delivery):
    """A JSON POST signed with HMAC-SHA256 over `<timestamp>.<body>`."""

    type: Literal["webhook"]
    secret_env: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="The environment variable holding the signing secret.",
    )


class JiraNotifierConfig(_Delivery):
    """Jira Cloud or Server: one issue per rule, a comment on each later transition."""

    type: Literal["jira"]
    email: str = Field(min_length=3, max_length=255)
    api_token_env: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="The environment variable holding the API token.",
    )
    project: str = Field(min_length=1, max_length=64)
    issue_type: str = Field(default="Task", min_length=1, max_length=64)
    api_version: Literal[2, 3] = 2
    labels: list[str] = Field(default_factory=list)


NotifierConfig = Annotated[
    SlackNotifierConfig | WebhookNotifierConfig | JiraNotifierConfig,
    Field(discriminator="type"),
]


class AlertsConfig(_Section):
    """Alert rules, where they notify, and how often one replica evaluates them."""

    enabled: bool = Field(default=True, description="Evaluate rules on a schedule.")
    evaluation_interval_s: float = Field(default=30.0, gt=0, le=86400)
    lease_ttl_s: float = Field(
        default=90.0,
        gt=0,
        le=86400,
        description="How long the evaluating replica holds the lease without renewing it.",
    )
    rules: list[AlertRuleConfig] = Field(default_factory=list)
    notifiers: list[NotifierConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> AlertsConfig:
        names = [notifier.name for notifier in self.notifiers]
        for name in names:
            if not _NAME.fullmatch(name):
                raise ValueError(f"notifier name {name[:60]!r}: letters, digits or `_ . : -`")
        if len(set(names)) != len(names):
            raise ValueError("notifier names must be unique")
        rules = [rule.name for rule in self.rules]
        if len(set(rules)) != len(rules):
            raise ValueError("rule names must be unique")
        for rule in self.rules:
            unknown = sorted(set(rule.notifiers or ()) - set(names))
            if unknown:
                raise ValueError(f"rule {rule.name!r}: unknown notifier(s) {', '.join(unknown)}")
        if self.lease_ttl_s <= self.evaluation_interval_s:
            raise ValueError("lease_ttl_s must be longer than evaluation_interval_s")
        return self
