from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from keel.config import DeploymentConfig, ModelGroupConfig, Settings, did_you_mean
from keel.errors import ConfigError, InvalidRequestError, ModelNotFoundError
from keel.providers import Provider, load_provider_class
from keel.providers._bundled import BUNDLED_CHAT_MODEL_ID, BUNDLED_EMBEDDING_MODEL_ID
from keel.routing.executor import AttemptTrace, execute
from keel.routing.group import Deployment, ModelGroup
from keel.routing.health import DeploymentHealth

if TYPE_CHECKING:
    import aiohttp

    from keel.gateway.pricing import PriceTable

__all__ = ["Capability", "Router", "build_router", "check_deployments"]

Capability = Literal["chat", "completions", "embeddings"]
T = TypeVar("T")


def bundled_deployments(settings: Settings) -> list[DeploymentConfig]:
    local = settings.local_models
    bundled = []
    if local.chat:
        bundled.append(
            DeploymentConfig(
                id=BUNDLED_CHAT_MODEL_ID,
                provider="llama_cpp",
                n_ctx=local.n_ctx,
                n_threads=local.n_threads,
            )
        )
    if local.embeddings:
        bundled.append(
            DeploymentConfig(
                id=BUNDLED_EMBEDDING_MODEL_ID, provider="sentence_transformers", kind="embedding"
            )
        )
    declared = {model.id for model in settings.models} | {group.id for group in settings.groups}
    return [deployment for deployment in bundled if deployment.id not in declared]


def check_deployments(settings: Settings) -> None:
    """Raise ConfigError naming the entry and field a declared deployment is missing."""
    source = str(settings.config_file or "settings")
    located = [(f"models.{i} ({d.id})", d) for i, d in enumerate(settings.models)]
    for g_index, group in enumerate(settings.groups):
        located += [
            (f"groups.{g_index} ({group.id}).deployments.{d_index} ({d.id})", d)
            for d_index, d in enumerate(group.deployments)
        ]
    for location, deployment in located:
        provider_class = load_provider_class(deployment.provider)
        known_options = provider_class.known_options
        for option in deployment.options:
            if known_options is not None and option not in known_options:
                listed = ", ".join(sorted(known_options)) or "none"
                raise ConfigError(
                    f"{source}: {location}.options.{option}: unknown option for provider "
                    f"{deployment.provider!r}{did_you_mean(option, known_options)} "
                    f"(its options: {listed})"
                )
        for field in provider_class.required_config:
            if getattr(deployment, field) is None:
                raise ConfigError(
                    f"{source}: {location}.{field}: required by provider {deployment.provider!r}"
                )
        try:
            # Constructing a provider touches no network; it validates provider-specific
            # options, so a mistake there also stops start-up before a socket is bound.
            provider_class(deployment, None)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"{source}: {location}: {exc.message}") from None


def build_router(
    settings: Settings, http: aiohttp.ClientSession, prices: PriceTable | None = None
) -> Router:
    """Every served model id as a group: bundled and plain models are groups of one."""
    check_deployments(settings)
    routing = settings.routing
    singles = [
        ModelGroupConfig(id=deployment.id, deployments=[deployment])
        for deployment in [*bundled_deployments(settings), *settings.models]
    ]
    groups = {}
    for config in [*singles, *settings.groups]:
        circuit = config.circuit or routing.circuit
        deployments = []
        for deployment_config in config.deployments:
            provider = load_provider_class(deployment_config.provider)(deployment_config, http)
            health = DeploymentHealth(
                circuit=circuit,
                ewma_alpha=routing.latency_ewma_alpha,
                rpm=deployment_config.rpm,
                tpm=deployment_config.tpm,
            )
            price = None
            if prices is not None:
                found = prices.price_for(deployment_config.id, deployment_config.upstream_model)
                price = None if found is None else found.input + found.output
            deployments.append(Deployment(provider, health, price))
        groups[config.id] = ModelGroup(
            id=config.id,
            deployments=deployments,
            strategy=config.strategy,
            retry=config.retry or routing.retry,
            circuit=circuit,
            fallbacks=list(config.fallbacks),
            context_window_fallback=config.context_window_fallback,
            content_policy_fallback=config.content_policy_fallback,
            cache=config.cache,
        )
    return Router(groups)


class Router:
    def __init__(self, groups: dict[str, ModelGroup]) -> None:
        self._groups = groups
        self._created = int(time.time())

    @property
    def providers(self) -> Iterable[Provider]:
        for group in self._groups.values():
            for deployment in group.deployments:
                yield deployment.provider

    def groups(self) -> list[ModelGroup]:
        return list(self._groups.values())

    def has(self, model: str) -> bool:
        return model in self._groups

    def group(self, model: str) -> ModelGroup:
        group = self._groups.get(model)
        if group is None:
            raise ModelNotFoundError(
                f"the model {model!r} does not exist; GET /v1/models lists the models served",
                param="model",
            )
        return group

    def resolve(self, model: str, capability: Capability) -> ModelGroup:
        group = self.group(model)
        provider = group.first_provider
        supported = {
            "chat": provider.supports_chat,
            "completions": provider.supports_chat or provider.supports_completions,
            "embeddings": provider.supports_embeddings,
        }[capability]
        if not supported:
            raise InvalidRequestError(
                f"model {model!r} does not support {capability}",
                param="model",
                code="wrong_model_kind",
            )
        return group

    async def execute(
        self,
        group: ModelGroup,
        invoke: Callable[[Provider], Awaitable[T]],
        trace: AttemptTrace,
        *,
        hold: bool = False,
        regions: frozenset[str] | None = None,
        enter_fallback: Callable[[ModelGroup], Awaitable[None]] | None = None,
    ) -> T:
        """Run `invoke` through retries and fallbacks; with `regions`, only on deployments in
        those regions (local deployments always qualify: no data leaves the machine)."""
        return await execute(
            group,
            invoke,
            self.group,
            trace,
            hold=hold,
            regions=regions,
            enter_fallback=enter_fallback,
        )

    def chain(self, group: ModelGroup) -> list[ModelGroup]:
        """The group and every group a request for it may end up on, transitively: fallbacks,
        context-window and content-policy fallbacks, and theirs."""
        found = [group]
        for current in found:  # grows while walked
            for target in [
                *current.fallbacks,
                current.context_window_fallback,
                current.content_policy_fallback,
            ]:
                candidate = self._groups.get(target) if target is not None else None
                if candidate is not None and candidate not in found:
                    found.append(candidate)
        return found

    def describe(self, model: str) -> dict[str, Any]:
        return self._card(self.group(model))

    def list_models(self) -> list[dict[str, Any]]:
        return [self._card(group) for group in self._groups.values()]

    def deployments(self) -> list[dict[str, Any]]:
        return [
            {
                "id": deployment.id,
                "group": group.id,
                "provider": deployment.provider.name,
                "upstream_model": deployment.provider.upstream_model,
                "weight": deployment.weight,
                "tier": deployment.tier,
                "region": deployment.provider.config.region,
                **deployment.health.snapshot(),
            }
            for group in self._groups.values()
            for deployment in group.deployments
        ]

    def _card(self, group: ModelGroup) -> dict[str, Any]:
        owners = {deployment.provider.name for deployment in group.deployments}
        return {
            "id": group.id,
            "object": "model",
            "created": self._created,
            "owned_by": owners.pop() if len(owners) == 1 else "keel",
        }
