"""The `pii` and `guardrails` sections of keel.yaml.

Plain pydantic with no Presidio import, so loading settings stays cheap; the recognizers these
names refer to are built in `recognizers.py`, lazily.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "BUILTIN_ENTITIES",
    "DEFAULT_ENTITIES",
    "SECRET_ENTITIES",
    "CustomRecognizer",
    "GuardrailRule",
    "GuardrailsConfig",
    "PiiAction",
    "PiiConfig",
    "PiiOverride",
    "RuleAction",
    "RuleKind",
    "Stage",
]

PiiAction = Literal["allow", "mask", "pseudonymize", "block"]
RuleKind = Literal[
    "pii",
    "secrets",
    "prompt_injection",
    "deny_list",
    "regex",
    "max_length",
    "json_schema",
    "classifier",
]
RuleAction = Literal["block", "mask", "warn", "log"]
Stage = Literal["input", "output", "both"]

# Keel's own recognizers for credentials (see recognizers.py).
SECRET_ENTITIES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "AWS_ACCESS_KEY_ID",
    "GITHUB_TOKEN",
    "SLACK_TOKEN",
    "KEEL_API_KEY",
    "BEARER_TOKEN",
    "PRIVATE_KEY",
)
# Presidio's pattern-based recognizers that Keel registers. National ids other than US_SSN
# come through `recognizers`, so that each deployment opts into the ones it needs.
PRESIDIO_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "MAC_ADDRESS",
    "CRYPTO",
    "URL",
    "US_SSN",
)
BUILTIN_ENTITIES = PRESIDIO_ENTITIES + SECRET_ENTITIES
# URL and MAC_ADDRESS are left out: documentation links and hardware ids are rarely personal,
# and masking them damages prompts about code. US_SSN is a national id: opt in.
DEFAULT_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "CRYPTO",
    *SECRET_ENTITIES,
)
# Entity names end up inside placeholders such as <EMAIL_ADDRESS_1>, which the answer restorer
# finds by shape; keep them to that shape.
ENTITY_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
MASKABLE_KINDS = frozenset({"pii", "secrets", "deny_list", "regex"})
KIND_PARAMS: dict[str, tuple[str, ...]] = {
    "pii": ("entities",),
    "secrets": ("entities",),
    "prompt_injection": ("threshold",),
    "deny_list": ("terms",),
    "regex": ("patterns",),
    "max_length": ("max_chars",),
    "json_schema": ("schema_",),
    "classifier": ("model", "labels", "threshold"),
}
PARAM_NAMES = {"schema_": "schema"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_entity_names(names: list[str]) -> list[str]:
    bad = [name for name in names if not ENTITY_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"entity names are UPPER_SNAKE_CASE; not: {', '.join(bad)}")
    return names


def _compile_all(patterns: list[str], *, engine: Any = re) -> list[str]:
    for pattern in patterns:
        try:
            engine.compile(pattern)
        except Exception as exc:  # re.error and regex.error share no base class
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return patterns


class CustomRecognizer(_Section):
    """A pattern recognizer added to the built-in ones (national ids, internal ids, ...)."""

    entity: str = Field(min_length=1, description="UPPER_SNAKE_CASE, e.g. UK_NINO.")
    patterns: list[str] = Field(min_length=1, description="Case-sensitive regular expressions.")
    score: float = Field(default=0.6, ge=0, le=1)
    context: list[str] = Field(
        default_factory=list, description="Words shortly before a match that raise its score."
    )

    @field_validator("entity")
    @classmethod
    def _entity_shape(cls, value: str) -> str:
        return _check_entity_names([value])[0]

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        # Presidio runs recognizers with the `regex` module; check with the engine that runs them.
        import regex

        return _compile_all(value, engine=regex)


class PiiOverride(_Section):
    """Policies for some teams or models; the first override that matches wins."""

    teams: list[str] | None = Field(default=None, description="None: any team.")
    models: list[str] | None = Field(
        default=None, description="Model ids or groups, shell-style wildcards allowed; None: any."
    )
    outbound: PiiAction | None = None
    local: PiiAction | None = None


class PiiConfig(_Section):
    entities: list[str] = Field(default_factory=lambda: list(DEFAULT_ENTITIES))
    score_threshold: float = Field(default=0.4, ge=0, le=1)
    store: Literal["mask", "off"] = Field(
        default="mask", description="Mask PII in what Keel stores (error messages, ...)."
    )
    outbound: PiiAction = Field(
        default="allow", description="Before a prompt leaves for an external provider."
    )
    local: PiiAction = Field(
        default="allow", description="For model groups served only by local models."
    )
    overrides: list[PiiOverride] = Field(default_factory=list)
    recognizers: list[CustomRecognizer] = Field(default_factory=list)

    @field_validator("entities")
    @classmethod
    def _entities_shape(cls, value: list[str]) -> list[str]:
        return _check_entity_names(value)

    @model_validator(mode="after")
    def _entities_known(self) -> PiiConfig:
        unknown = sorted(set(self.entities) - self.known_entities())
        if unknown:
            raise ValueError(
                f"entities: no recognizer for {', '.join(unknown)}; add one under `recognizers`"
            )
        return self

    def known_entities(self) -> frozenset[str]:
        """Every entity a recognizer exists for: the built-in ones and the custom ones."""
        return frozenset(BUILTIN_ENTITIES) | {custom.entity for custom in self.recognizers}

    def detected_entities(self) -> list[str]:
        """`entities` plus those of custom recognizers: configuring one means wanting it."""
        extra = [r.entity for r in self.recognizers if r.entity not in self.entities]
        return [*self.entities, *dict.fromkeys(extra)]

    def policy_actions(self) -> set[str]:
        actions: set[str] = {self.outbound, self.local}
        for override in self.overrides:
            actions.update(a for a in (override.outbound, override.local) if a is not None)
        return actions


class GuardrailRule(_Section):
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

    name: str = Field(min_length=1)
    kind: RuleKind
    stage: Stage = Field(default="input", description="json_schema rules default to output.")
    action: RuleAction = "block"
    teams: list[str] | None = Field(default=None, description="None: every team.")
    models: list[str] | None = Field(
        default=None, description="Model ids or groups, shell-style wildcards allowed; None: all."
    )
    entities: list[str] | None = Field(
        default=None, description="pii: default `pii.entities`; secrets: default all kinds."
    )
    terms: list[str] = Field(default_factory=list, description="deny_list: whole words, any case.")
    patterns: list[str] = Field(default_factory=list, description="regex: regular expressions.")
    max_chars: int | None = Field(default=None, gt=0, description="max_length.")
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema", description="json_schema: the JSON Schema of answers."
    )
    model: str | None = Field(default=None, description="classifier: the model to ask.")
    labels: list[str] = Field(default_factory=list, description="classifier: labels that trip.")
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="classifier, prompt_injection: default 0.5."
    )

    @model_validator(mode="before")
    @classmethod
    def _schema_rules_screen_answers(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "json_schema" and "stage" not in data:
            return {**data, "stage": "output"}
        return data

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        return _compile_all(value)

    @field_validator("entities")
    @classmethod
    def _entities_shape(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_entity_names(value)

    @model_validator(mode="after")
    def _params_fit_the_kind(self) -> GuardrailRule:
        where = f"rule {self.name!r} ({self.kind})"
        allowed = KIND_PARAMS[self.kind]
        for params in KIND_PARAMS.values():
            for param in params:
                if param not in allowed and param in self.model_fields_set:
                    shown = PARAM_NAMES.get(param, param)
                    raise ValueError(f"{where}: `{shown}` does not apply to {self.kind} rules")
        missing = {
            "deny_list": not self.terms,
            "regex": not self.patterns,
            "max_length": self.max_chars is None,
            "json_schema": self.schema_ is None,
            "classifier": not self.model or not self.labels,
        }.get(self.kind, False)
        if missing:
            needed = " and ".join(f"`{PARAM_NAMES.get(p, p)}`" for p in allowed if p != "threshold")
            raise ValueError(f"{where}: {needed} required")
        if self.action == "mask" and self.kind not in MASKABLE_KINDS:
            raise ValueError(
                f"{where}: action `mask` needs matches to replace; use block, warn or log"
            )
        if self.kind == "json_schema":
            if self.stage != "output":
                raise ValueError(f"{where}: json_schema rules check answers; stage must be output")
            self._check_schema()
        if self.kind == "secrets" and self.entities is not None:
            unknown = sorted(set(self.entities) - set(SECRET_ENTITIES))
            if unknown:
                raise ValueError(f"{where}: not a secret kind: {', '.join(unknown)}")
        if self.kind == "deny_list" and any(not term.strip() for term in self.terms):
            raise ValueError(f"{where}: `terms` must not contain empty terms")
        return self

    def _check_schema(self) -> None:
        from jsonschema import exceptions, validators

        try:
            validators.validator_for(self.schema_).check_schema(self.schema_)
        except exceptions.SchemaError as exc:
            raise ValueError(f"rule {self.name!r}: invalid JSON Schema: {exc.message}") from exc

    def applies_to(self, stage: Literal["input", "output"]) -> bool:
        return self.stage in (stage, "both")


class GuardrailsConfig(_Section):
    rules: list[GuardrailRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> GuardrailsConfig:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rules: duplicate names: {', '.join(duplicates)}")
        return self
