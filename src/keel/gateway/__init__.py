"""The gateway: Keel's OpenAI-compatible request path, cost accounting and request records."""

from keel.gateway.call import Call
from keel.gateway.pricing import PriceTable, Usage
from keel.gateway.service import BodySource, CallObserver, Gateway, Governance, Reply

__all__ = [
    "BodySource",
    "Call",
    "CallObserver",
    "Gateway",
    "Governance",
    "PriceTable",
    "Reply",
    "Usage",
]
