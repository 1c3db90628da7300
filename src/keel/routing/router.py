from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from keel.config import DeploymentConfig, Settings
from keel.errors import ConfigError, InvalidRequestError, ModelNotFoundError
from keel.providers import Provider, load_provider_class
from keel.providers._bundled import BUNDLED_CHAT_MODEL_ID, BUNDLED_EMBEDDING_MODEL_ID

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Capability", "Router", "build_providers", "check_deployments"]

Capability = Literal["chat", "completions", "embeddings"]


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
    declared = {deployment.id for deployment in settings.models}
    return [deployment for deployment in bundled if deployment.id not in declared]


def check_deployments(settings: Settings) -> None:
    """Raise ConfigError naming the entry and field a declared model is missing."""
    source = str(settings.config_file or "settings")
    for index, deployment in enumerate(settings.models):
        provider_class = load_provider_class(deployment.provider)
        for field in provider_class.required_config:
            if getattr(deployment, field) is None:
                raise ConfigError(
                    f"{source}: models.{index}.{field}: required by provider "
                    f"{deployment.provider!r} (model {deployment.id!r})"
                )


def build_providers(settings: Settings, http: aiohttp.ClientSession) -> dict[str, Provider]:
    """One provider instance per served model: the bundled local ones, then the declared ones."""
    check_deployments(settings)
    deployments = [*bundled_deployments(settings), *settings.models]
    return {
        deployment.id: load_provider_class(deployment.provider)(deployment, http)
        for deployment in deployments
    }


class Router:
    def __init__(self, providers: dict[str, Provider]) -> None:
        self._providers = providers
        self._created = int(time.time())

    @property
    def providers(self) -> Iterable[Provider]:
        return self._providers.values()

    def resolve(self, model: str, capability: Capability) -> Provider:
        provider = self._providers.get(model)
        if provider is None:
            raise ModelNotFoundError(
                f"the model {model!r} does not exist; GET /v1/models lists the models served",
                param="model",
            )
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
        return provider

    def describe(self, model: str) -> dict[str, Any]:
        provider = self._providers.get(model)
        if provider is None:
            raise ModelNotFoundError(f"the model {model!r} does not exist", param="model")
        return self._card(provider)

    def list_models(self) -> list[dict[str, Any]]:
        return [self._card(provider) for provider in self._providers.values()]

    def _card(self, provider: Provider) -> dict[str, Any]:
        return {
            "id": provider.config.id,
            "object": "model",
            "created": self._created,
            "owned_by": provider.name,
        }
