"""Keel's configuration: one validated `Settings` and its sections.

Where the values come from (defaults, the YAML file, KEEL_* variables, flags) and how mistakes
are reported is `keel.config_loading`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from keel.governance.config import AuthConfig, QuotaConfig, ResidencyConfig
from keel.governance.guardrails.config import GuardrailsConfig, PiiConfig
from keel.monitoring.alerts_config import AlertsConfig
from keel.monitoring.config import MetricsConfig
from keel.monitoring.tracing_config import TracingConfig
from keel.tracking.config import TrackingConfig

__all__ = [
    "DeploymentConfig",
    "LocalModelsConfig",
    "PriceConfig",
    "ServerConfig",
    "Settings",
    "did_you_mean",
]

DEFAULT_HOME = Path("~/.keel")
_HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\]")
_ORIGIN_PATTERN = re.compile(r"https?://([a-z0-9_.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Section models that subclass `_Section` live in their own modules; imported once it exists.
from keel.monitoring.drift_config import DriftConfig  # noqa: E402


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_request_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    record_batch_size: int = Field(default=500, ge=1)
    record_flush_interval_s: float = Field(default=0.2, gt=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names clients may address (`*.example.com` for subdomains); empty: "
        "loopback names only in open mode, any where authentication is required.",
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="Web origins allowed to call Keel from a browser."
    )
    refusal_audit_window_s: float = Field(default=60.0, gt=0)
    refusal_audit_max_sources: int = Field(default=1000, ge=1)

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        names = [host.strip().lower().removesuffix(".") for host in hosts]
        for name in names:
            if not _HOST_PATTERN.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a host name (no scheme, port or path; IPv6 in brackets)"
                )
        return names

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        found = [origin.strip().lower().removesuffix("/") for origin in origins]
        for origin in found:
            if origin != "*" and not _ORIGIN_PATTERN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return found


class LocalModelsConfig(_Section):
    """The bundled offline models: SmolLM2-135M-Instruct (chat), all-MiniLM-L6-v2 (embeddings)."""

    chat: bool = True
    embeddings: bool = True
    n_ctx: int = Field(default=2048, ge=256)
    n_threads: int | None = Field(default=None, ge=1)
    preload: bool = True


_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,128}")
_NEVER_FORWARDED = frozenset(
    {
        "authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "accept-encoding",
    }
)


class DeploymentConfig(_Section):
    """One model Keel serves: a public id and the provider deployment behind it."""

    id: str = Field(min_length=1, description="The model id clients send.")
    provider: str = Field(min_length=1)
    model: str | None = Field(default=None, description="Upstream model name; defaults to id.")
    kind: Literal["chat", "embedding"] = "chat"
    api_base: str | None = None
    api_key: SecretStr | None = None
    api_version: str | None = None
    organization: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    forward_headers: list[str] | None = Field(
        default=None,
        description="Client headers passed on to the upstream (default: the provider's own, "
        "OpenAI-Organization, OpenAI-Project and Idempotency-Key for OpenAI-family ones).",
    )
    timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    model_path: Path | None = None
    n_ctx: int = Field(default=4096, ge=256)
    n_threads: int | None = Field(default=None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)
    # How the deployment takes part in a model group.
    weight: float = Field(default=1.0, gt=0, description="Share of traffic (weighted strategy).")
    tier: int = Field(default=1, ge=1, description="Priority tier; 1 is used first.")
    region: str | None = Field(default=None, description="Region or jurisdiction tag.")
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute it can take.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute it can take.")

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        from keel.providers import provider_names

        known = provider_names()
        if value not in known:
            raise ValueError(f"unknown provider {value!r}; known providers: {', '.join(known)}")
        return value

    @field_validator("forward_headers")
    @classmethod
    def _forwardable(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [name.strip().lower() for name in value]
        for name in names:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name")
            if name in _NEVER_FORWARDED or name.startswith(("x-keel-", "proxy-", "sec-")):
                # The client's own credentials for Keel and the connection's headers stay here.
                raise ValueError(f"header {name!r} is never forwarded")
        return names

    @field_validator("model_path")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def upstream_model(self) -> str:
        return self.model or self.id


class PriceConfig(_Section):
    """USD per 1M tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)


RetryableFailure = Literal[
    "rate_limit", "server_error", "unavailable", "timeout", "connection", "bad_response", "auth"
]
DEFAULT_RETRY_ON: tuple[RetryableFailure, ...] = (
    "rate_limit",
    "server_error",
    "unavailable",
    "timeout",
    "connection",
    "bad_response",
    "auth",
)


class RetryPolicy(_Section):
    """Retries within a group. A 4xx caused by the request itself is never retried."""

    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_initial_s: float = Field(default=0.1, ge=0)
    backoff_max_s: float = Field(default=4.0, ge=0)
    deadline_s: float = Field(default=600.0, gt=0, description="Total time for one request.")
    rate_limit_wait_s: float = Field(
        default=1.0,
        ge=0,
        description="Longest Retry-After a request waits out when every deployment is rate "
        "limited; past it the 429 goes back to the client.",
    )
    retry_on: list[RetryableFailure] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON))


class CircuitPolicy(_Section):
    """Take a deployment out of rotation after `failure_threshold` failures in `window_s`."""

    failure_threshold: int = Field(default=5, ge=1)
    window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(default=30.0, gt=0)


class RoutingConfig(_Section):
    """Defaults for every group (and for each plain model, which is a group of one)."""

    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    circuit: CircuitPolicy = Field(default_factory=CircuitPolicy)
    latency_ewma_alpha: float = Field(default=0.3, gt=0, le=1)


Strategy = Literal["weighted", "least_inflight", "lowest_latency", "lowest_cost", "priority"]


class SemanticCacheConfig(_Section):
    """Answer a prompt close in meaning to one already answered (off by default)."""

    enabled: bool = False
    threshold: float = Field(default=0.95, gt=0, le=1, description="Cosine similarity.")
    embedding_model: str = Field(default="all-minilm-l6-v2", description="An embedding model id.")
    max_entries_per_scope: int = Field(default=10_000, ge=1)
    guard: Literal["off", "lexical", "verify"] = Field(
        default="lexical", description="Precision guard on a similar enough entry."
    )
    verify_model: str | None = Field(
        default=None, description="Chat model that judges the verify band (guard verify)."
    )
    verify_band: float = Field(
        default=0.03, ge=0, le=1, description="Similarity above the threshold that is judged."
    )


class CacheConfig(_Section):
    """The response cache: in-process first, then Redis (with `redis_url`) or a SQLite file."""

    enabled: bool = True
    max_entries: int = Field(default=10_000, ge=1, description="In-process entries.")
    default_ttl_s: int = Field(default=3600, ge=1)
    persistent: bool = Field(default=True, description="Keep a SQLite tier under home.")
    second_tier_max_entries: int = Field(default=100_000, ge=1)
    semantic: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)


class GroupCacheConfig(_Section):
    """How one model group uses the response cache."""

    enabled: bool = True
    always: bool = Field(default=False, description="Cache every request, not only temperature 0.")
    ttl_s: int | None = Field(default=None, ge=1)
    semantic: bool | None = Field(default=None, description="None follows cache.semantic.enabled.")
    semantic_threshold: float | None = Field(default=None, gt=0, le=1)
    semantic_guard: Literal["off", "lexical", "verify"] | None = Field(
        default=None, description="None follows cache.semantic.guard."
    )


class ModelGroupConfig(_Section):
    """One public model id served by several deployments."""

    id: str = Field(min_length=1)
    strategy: Strategy = "weighted"
    deployments: list[DeploymentConfig] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    context_window_fallback: str | None = None
    content_policy_fallback: str | None = None
    retry: RetryPolicy | None = None
    circuit: CircuitPolicy | None = None
    cache: GroupCacheConfig = Field(default_factory=GroupCacheConfig)

    @model_validator(mode="before")
    @classmethod
    def _name_deployments(cls, data: Any) -> Any:
        # Deployments may omit `id`; they are then named after the group and their position.
        if isinstance(data, dict) and isinstance(data.get("deployments"), list):
            group = data.get("id", "group")
            data = {
                **data,
                "deployments": [
                    {"id": f"{group}-{index + 1}", **item} if isinstance(item, dict) else item
                    for index, item in enumerate(data["deployments"])
                ],
            }
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> ModelGroupConfig:
        kinds = {deployment.kind for deployment in self.deployments}
        if len(kinds) > 1:
            raise ValueError(f"group {self.id!r} mixes chat and embedding deployments")
        return self

    def all_fallbacks(self) -> list[str]:
        special = [self.context_window_fallback, self.content_policy_fallback]
        return [*self.fallbacks, *(name for name in special if name)]


class RegistryConfig(_Section):
    """The model registry."""

    approvals_required: int = Field(
        default=1, ge=1, description="Approvals a promotion needs (the requester's never counts)."
    )
    refresh_interval_s: float = Field(
        default=5.0, gt=0, description="How often the gateway reloads the registry it serves."
    )


class Settings(_Section):
    home: Path = DEFAULT_HOME
    database_url: str | None = None
    redis_url: str | None = Field(default=None, description="Shared state across replicas.")
    redis_prefix: str = Field(
        default="keel:",
        pattern=r"^[A-Za-z0-9._:-]{1,100}$",
        description="Starts every Redis key and channel Keel uses: deployments sharing one "
        "Redis need one each.",
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    local_models: LocalModelsConfig = Field(default_factory=LocalModelsConfig)
    models: list[DeploymentConfig] = Field(default_factory=list)
    groups: list[ModelGroupConfig] = Field(default_factory=list)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    quotas: QuotaConfig = Field(default_factory=QuotaConfig)
    residency: ResidencyConfig = Field(default_factory=ResidencyConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    # monitoring: metrics
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    # monitoring: traces
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    # monitoring: drift
    drift: DriftConfig = Field(default_factory=DriftConfig)
    # monitoring: alerts
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    # experiments: tracking
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    config_file: Path | None = None

    @model_validator(mode="after")
    def _consistent_routing(self) -> Settings:
        public: set[str] = set()
        deployments: set[str] = set()
        for model_id in [m.id for m in self.models] + [g.id for g in self.groups]:
            if model_id in public:
                raise ValueError(f"model id {model_id!r} is declared twice")
            public.add(model_id)
        for deployment in [*self.models, *(d for g in self.groups for d in g.deployments)]:
            if deployment.id in deployments:
                raise ValueError(f"deployment id {deployment.id!r} is declared twice")
            deployments.add(deployment.id)
        kinds: dict[str, str] = {}
        # The bundled models are served under their ids unless a declared model takes the id.
        from keel.providers._bundled import BUNDLED_CHAT_MODEL_ID, BUNDLED_EMBEDDING_MODEL_ID

        if self.local_models.chat:
            kinds[BUNDLED_CHAT_MODEL_ID] = "chat"
        if self.local_models.embeddings:
            kinds[BUNDLED_EMBEDDING_MODEL_ID] = "embedding"
        kinds.update({model.id: model.kind for model in self.models})
        kinds.update({group.id: group.deployments[0].kind for group in self.groups})
        for group in self.groups:
            for target in group.all_fallbacks():
                if target not in kinds:
                    raise ValueError(
                        f"group {group.id!r}: fallback {target!r} is not a model id"
                        f"{did_you_mean(target, kinds)}"
                    )
                if kinds[target] != kinds[group.id]:
                    raise ValueError(
                        f"group {group.id!r}: fallback {target!r} serves {kinds[target]}, "
                        f"not {kinds[group.id]}"
                    )
        _check_no_fallback_cycle({group.id: group.all_fallbacks() for group in self.groups})
        return self

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    def secret_values(self) -> list[str]:
        """Every configured value that may be a credential: keys, every upstream header value,
        the admin key and the passwords in connection URLs (see `keel.secrets`)."""
        values: list[str] = []
        for deployment in [*self.models, *(d for g in self.groups for d in g.deployments)]:
            if deployment.api_key is not None:
                values.append(deployment.api_key.get_secret_value())
            values.extend(deployment.headers.values())
        if self.auth.admin_key is not None:
            values.append(self.auth.admin_key.get_secret_value())
        for url in (self.database_url, self.redis_url):
            password = urlsplit(url).password if url else None
            if password:
                values.append(password)
        return values

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'keel.db'}"


def _check_no_fallback_cycle(edges: dict[str, list[str]]) -> None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycle = [*visiting[visiting.index(node) :], node]
            raise ValueError(f"group {node!r}: fallbacks form a cycle: {' -> '.join(cycle)}")
        visiting.append(node)
        for target in edges.get(node, []):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in edges:
        visit(node)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest of `choices`, or nothing when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
