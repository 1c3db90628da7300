"""PII protection and guardrails: Presidio-based PII masking and pseudonymization, and rules
that block, mask, warn about or log what requests and answers contain.

    guardrails = Guardrails(settings.pii, settings.guardrails, chat=gateway_chat)
    screening = await guardrails.screen_request(request, team=team, model=group, external=True)
    ...
    await guardrails.screen_response(screening, answer)

Importing this package does not import Presidio (it takes seconds); `PiiMasker` and the first
screening that needs it do, or `Guardrails.load()` at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keel.governance.guardrails.config import (
    CustomRecognizer,
    GuardrailRule,
    GuardrailsConfig,
    PiiConfig,
    PiiOverride,
)
from keel.governance.guardrails.engine import GuardrailBlocked, Guardrails, Screening
from keel.governance.guardrails.pseudonyms import Pseudonyms
from keel.governance.guardrails.rules import ChatFn
from keel.governance.guardrails.streaming import StreamRestorer

if TYPE_CHECKING:
    from keel.governance.guardrails.pii import Masked, PiiMasker

__all__ = [
    "ChatFn",
    "CustomRecognizer",
    "GuardrailBlocked",
    "GuardrailRule",
    "Guardrails",
    "GuardrailsConfig",
    "Masked",
    "PiiConfig",
    "PiiMasker",
    "PiiOverride",
    "Pseudonyms",
    "Screening",
    "StreamRestorer",
]


def __getattr__(name: str) -> Any:
    if name in ("PiiMasker", "Masked"):
        from keel.governance.guardrails import pii

        return getattr(pii, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
