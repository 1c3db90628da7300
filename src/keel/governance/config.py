"""The governance sections of keel.yaml: `auth`, `quotas` and `residency`.

Kept apart from `keel.config` so that module stays about the gateway; `Settings` includes these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["AuthConfig", "LimitSet", "OidcIssuerConfig", "QuotaConfig", "ResidencyConfig"]

Role = Literal["admin", "maintainer", "developer", "viewer"]

# Upper bounds for limits: far above any real quota, and low enough that a limit always fits
# the quota store's 64-bit counters (USD are counted in micro-dollars: 10**9 USD is 10**15).
MAX_COUNT = 10**15
MAX_USD = 10**9


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        # PostgreSQL refuses NUL in text, a path with one cannot be opened, and a lone surrogate
        # cannot be encoded at all: refuse them here, where the error still names the field,
        # rather than as a 500 later.
        if not _storable(value):
            raise ValueError("must not contain NUL characters or lone surrogates")
        return value


def _storable(value: Any) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str | Path):
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\x00" not in text
    if isinstance(value, dict):
        return all(_storable(key) and _storable(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return all(_storable(item) for item in value)
    return True


class OidcIssuerConfig(_Section):
    """An identity provider whose JWTs Keel accepts as bearer tokens."""

    issuer: str = Field(min_length=1, description="Must equal the token's `iss` claim.")
    audience: str | None = Field(default=None, description="Required `aud`, if set.")
    jwks_url: str | None = None
    jwks_file: Path | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    user_claim: str = "sub"
    team_claim: str | None = "team"
    role_claim: str = Field(default="keel_role", description="A role name or a list of them.")
    default_role: Role = "viewer"
    environment: Literal["sandbox", "production"] = "production"

    @model_validator(mode="after")
    def _one_key_source(self) -> OidcIssuerConfig:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("set exactly one of jwks_url and jwks_file")
        if any(alg.upper().startswith("HS") or alg.lower() == "none" for alg in self.algorithms):
            raise ValueError("algorithms: only asymmetric algorithms (RS*, ES*, PS*, EdDSA)")
        return self


class AuthConfig(_Section):
    admin_key: SecretStr | None = Field(
        default=None, description="A bootstrap admin key (also KEEL_ADMIN_KEY)."
    )
    required: bool | None = Field(
        default=None,
        description="None: required unless the server binds to loopback with no admin key.",
    )
    oidc: list[OidcIssuerConfig] = Field(default_factory=list)
    refresh_interval_s: float = Field(
        default=1.0, gt=0, description="How often replicas look for key and policy changes."
    )


class LimitSet(_Section):
    """Limits for one key, user, team or model. Unset means unlimited."""

    rpm: int | None = Field(default=None, ge=0, le=MAX_COUNT, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=0, le=MAX_COUNT, description="Tokens per minute.")
    tokens_per_day: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    usd_per_day: float | None = Field(default=None, ge=0, le=MAX_USD, allow_inf_nan=False)
    usd_per_month: float | None = Field(default=None, ge=0, le=MAX_USD, allow_inf_nan=False)

    def is_empty(self) -> bool:
        return all(value is None for value in self.model_dump().values())


class QuotaConfig(_Section):
    enabled: bool = True
    failure_mode: Literal["open", "closed"] = Field(
        default="open", description="When the shared counter store is unreachable."
    )
    models: dict[str, LimitSet] = Field(
        default_factory=dict, description="Limits per model id or group, over all callers."
    )
    default_key: LimitSet = Field(
        default_factory=LimitSet, description="Applied to keys that set no limits of their own."
    )
    default_output_tokens: int = Field(
        default=512,
        ge=0,
        description="Tokens reserved for an answer whose request sets no max_tokens (and whose "
        "registry card sets no max_output_tokens); settled to the real usage afterwards.",
    )


class ResidencyConfig(_Section):
    default_allowed_regions: list[str] | None = Field(
        default=None, description="For teams with no policy of their own; None allows all."
    )
