"""What one gateway call shares with the HTTP layer beneath the providers.

The gateway opens an `Exchange` per call; the HTTP layer reads the client's headers that a
deployment forwards from it and leaves the headers of the upstream's last response in it, so the
gateway can relay the upstream's request id and rate-limit state. A context variable carries it
because the providers' calls are many and their signatures are the provider seam's, not this.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = [
    "OPENAI_FORWARDED_HEADERS",
    "Exchange",
    "current_exchange",
    "forwarded_headers",
    "relayable_headers",
]

# Client headers OpenAI's API gives a meaning to, forwarded to OpenAI-family deployments.
OPENAI_FORWARDED_HEADERS = frozenset({"openai-organization", "openai-project", "idempotency-key"})


@dataclass(slots=True)
class Exchange:
    client_headers: Mapping[str, str] = field(default_factory=dict)
    # The relayable headers of the upstream's last response (success or error).
    response_headers: dict[str, str] = field(default_factory=dict)


current_exchange: ContextVar[Exchange | None] = ContextVar("keel_exchange", default=None)


def forwarded_headers(allowed: Collection[str]) -> dict[str, str]:
    """The current client's headers among `allowed` (lower-case names)."""
    exchange = current_exchange.get()
    if exchange is None or not allowed:
        return {}
    headers = exchange.client_headers
    return {name: headers[name] for name in allowed if name in headers}


def relayable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream response headers a client of the upstream would rely on: its request id,
    its rate-limit state and how long to wait."""
    kept = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in ("x-request-id", "retry-after") or lowered.startswith("x-ratelimit-"):
            kept[lowered] = value
    return kept


def note_response(headers: Mapping[str, str]) -> dict[str, str]:
    """Keep the relayable headers of an upstream response in the current exchange."""
    kept = relayable_headers(headers)
    exchange = current_exchange.get()
    if exchange is not None:
        exchange.response_headers = kept
    return kept
