"""Providers: the adapters between Keel's OpenAI-format requests and each LLM backend.

Built-in providers register exactly as third-party ones do: a name mapped to "module:Class".
Third-party packages add providers through the `keel.providers` entry-point group.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from keel.providers.base import Provider

__all__ = ["Provider", "load_provider_class", "provider_names"]

BUILTIN_PROVIDERS: dict[str, str] = {
    "openai": "keel.providers.openai_compat:OpenAICompatibleProvider",
    "openai_compatible": "keel.providers.openai_compat:OpenAICompatibleProvider",
    "azure": "keel.providers.openai_compat:AzureOpenAIProvider",
    "anthropic": "keel.providers.anthropic:AnthropicProvider",
    "gemini": "keel.providers.gemini:GeminiProvider",
    "cohere": "keel.providers.cohere:CohereProvider",
    "llama_cpp": "keel.providers.local_llama:LlamaCppProvider",
    "sentence_transformers": "keel.providers.local_embeddings:SentenceTransformersProvider",
}


@cache
def _registry() -> dict[str, str]:
    providers = dict(BUILTIN_PROVIDERS)
    for entry in entry_points(group="keel.providers"):
        providers.setdefault(entry.name, entry.value)
    return providers


def provider_names() -> list[str]:
    return sorted(_registry())


def load_provider_class(name: str) -> type[Provider]:
    target = _registry()[name]
    module_name, _, class_name = target.partition(":")
    provider_class = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(provider_class, type) and issubclass(provider_class, Provider)):
        raise TypeError(f"{target} is not a keel Provider subclass")
    return provider_class
