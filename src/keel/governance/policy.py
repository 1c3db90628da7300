"""What governance decides for one inference call, in the order the gateway asks:
may this caller use this model (key scope, environment vs registry stage), where may its data
go (residency), which limits apply and what the call is estimated to cost (quotas).

Everything here reads in-memory state: the access snapshot, the settings, the price table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from keel.errors import PermissionDeniedError, ResidencyError
from keel.governance.config import LimitSet, QuotaConfig, ResidencyConfig
from keel.governance.quotas import Limit, limits_from
from keel.identity import Actor
from keel.registry.enforce import estimate_input_tokens
from keel.schemas import ChatCompletionRequest, CompletionRequest

if TYPE_CHECKING:
    from keel.gateway.pricing import PriceTable
    from keel.governance.access import Access
    from keel.registry.view import ResolvedModel
    from keel.routing import ModelGroup, Router

__all__ = ["Estimate", "RequestPolicy", "Residency"]


@dataclass(frozen=True, slots=True)
class Residency:
    """The regions a caller's data may go to, and the policy that says so."""

    regions: frozenset[str]
    policy: str


@dataclass(frozen=True, slots=True)
class Estimate:
    tokens: int
    usd: float


class RequestPolicy:
    def __init__(
        self,
        access: Access,
        quotas: QuotaConfig,
        residency: ResidencyConfig,
        prices: PriceTable,
    ) -> None:
        self.access = access
        self.quotas = quotas
        self.residency = residency
        self.prices = prices

    # -- may this caller use this model --------------------------------------------------------

    def admit_model(self, actor: Actor, requested: str) -> None:
        """A key scoped to some models may call only those (registry references match by
        their model name: `name`, `name@production` and `name@3` are all `name`). Runs once
        the body is in, so a key revoked while it arrived is refused here."""
        self.access.still_valid(actor)
        allowed = actor.allowed_models
        if allowed is None or requested in allowed or requested.split("@", 1)[0] in allowed:
            return
        raise PermissionDeniedError(
            f"the API key {actor.key_id} may not use model {requested!r}",
            param="model",
            code="model_not_allowed",
        )

    def admit_stage(self, actor: Actor, resolved: ResolvedModel) -> None:
        """Production keys run only registry versions in production; sandbox keys run any
        version that isn't archived, so experiments never need a production key. The local
        user of open mode and the bootstrap admin key are not bound to an environment."""
        if actor.kind in ("local", "bootstrap"):
            return
        if actor.environment == "production" and resolved.stage != "production":
            raise PermissionDeniedError(
                f"{resolved.name}@{resolved.version} is in stage {resolved.stage!r}: production "
                "keys may only use versions in production (use a sandbox key to try it)",
                param="model",
                code="stage_not_allowed",
            )

    # -- where may the data go ---------------------------------------------------------------

    def residency_for(self, actor: Actor) -> Residency | None:
        team = self.access.team_policy(actor.team)
        if team is not None and team.allowed_regions is not None:
            return Residency(team.allowed_regions, f"team {team.name}'s data residency policy")
        if self.residency.default_allowed_regions is not None:
            return Residency(
                frozenset(self.residency.default_allowed_regions),
                "the default data residency policy (residency.default_allowed_regions)",
            )
        return None

    def check_residency(self, residency: Residency, group: ModelGroup, router: Router) -> None:
        """Refuse before any call when neither the group nor its fallbacks has a deployment
        the policy allows; otherwise the executor skips the ones it doesn't."""
        for candidate in [group.id, *group.fallbacks]:
            current = group if candidate == group.id else router.group(candidate)
            if any(d.in_region(residency.regions) for d in current.deployments):
                return
        raise ResidencyError(
            f"{residency.policy} allows regions {', '.join(sorted(residency.regions)) or '(none)'}"
            f"; no deployment of {group.id!r} is in them",
            param="model",
        )

    # -- quotas --------------------------------------------------------------------------------

    def limits_for(
        self, actor: Actor, group_id: str, resolved: ResolvedModel | None
    ) -> list[Limit]:
        """Every limit one call counts against: its key, user, team, model and registry card."""
        if not self.quotas.enabled:
            return []
        limits = self.usage_limits(
            key=actor.key_id,
            user=actor.name if actor.kind in ("user", "service_account") else None,
            team=actor.team,
            model=group_id,
        )
        if resolved is not None:
            card = LimitSet(
                rpm=resolved.limits.requests_per_minute,
                tokens_per_day=resolved.limits.tokens_per_day,
            )
            scope = f"registry:{resolved.name}"
            limits += limits_from(scope, f"registry model {resolved.name}", card)
        return limits

    def model_limits(self, group_id: str) -> list[Limit]:
        """A model's own limits, over every caller (checked again when a fallback is used)."""
        found = self.quotas.models.get(group_id) if self.quotas.enabled else None
        return [] if found is None else limits_from(f"model:{group_id}", f"model {group_id}", found)

    def usage_limits(
        self,
        *,
        key: str | None = None,
        user: str | None = None,
        team: str | None = None,
        model: str | None = None,
    ) -> list[Limit]:
        limits: list[Limit] = []
        if key is not None:
            grant = self.access.grant(key)
            key_limits = grant.limits if grant is not None else LimitSet()
            if key_limits.is_empty():
                key_limits = self.quotas.default_key
            limits += limits_from(f"key:{key}", f"key {key}", key_limits)
        if user is not None:
            own = self.access.principal_limits(user)
            if own is not None:
                limits += limits_from(f"user:{user}", f"user {user}", own)
        policy = self.access.team_policy(team)
        if policy is not None:
            limits += limits_from(f"team:{policy.name}", f"team {policy.name}", policy.limits)
        model_limits = self.quotas.models.get(model) if model is not None else None
        if model_limits is not None:
            limits += limits_from(f"model:{model}", f"model {model}", model_limits)
        return limits

    def estimate(
        self, request: BaseModel, group: ModelGroup, card_output_limit: int | None = None
    ) -> Estimate:
        """What to reserve before the call: the prompt's estimated tokens plus the most the
        answer may use — the request's `max_tokens`, else the registry card's
        `max_output_tokens`, else `quotas.default_output_tokens` — settled against real usage
        afterwards. Without a figure for the answer, concurrent calls could overshoot a token
        limit by their answers before any of them settles."""
        tokens = estimate_input_tokens(request)
        output = 0
        if isinstance(request, ChatCompletionRequest | CompletionRequest):
            asked = (
                request.output_token_limit()
                if isinstance(request, ChatCompletionRequest)
                else request.max_tokens
            )
            if asked is None:
                asked = card_output_limit
            if asked is None:
                asked = self.quotas.default_output_tokens
            output = asked * max(request.n or 1, 1)
        usd = 0.0
        provider = group.first_provider
        if not provider.is_local:
            price = self.prices.price_for(provider.config.id, provider.upstream_model)
            if price is not None:
                usd = (tokens * price.input + output * price.output) / 1_000_000
        return Estimate(tokens + output, usd)
