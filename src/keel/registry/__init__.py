"""The model registry: model cards, versions, aliases, promotions with approvals and quality
gates, lineage — and the in-memory view the gateway resolves `name@alias` against."""

from keel.registry.cards import CardLimits, ModelCard, card_digest, load_card, parse_card
from keel.registry.service import Registry
from keel.registry.view import RegistryView, ResolvedModel

__all__ = [
    "CardLimits",
    "ModelCard",
    "Registry",
    "RegistryView",
    "ResolvedModel",
    "card_digest",
    "load_card",
    "parse_card",
]
