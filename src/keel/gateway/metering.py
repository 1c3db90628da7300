"""Quota reservations for the gateway: reserved before a call, settled after it.

What is settled follows what was paid for:
- refused before any provider was asked: the reservation is given back, request included;
- a cache hit: the request counts, no tokens, no spend;
- the provider failed or refused (an HTTP error before any output): the request counts, nothing
  else (an answer a guardrail then blocks was produced, so it is paid);
- the provider reported usage: exactly that;
- the usage is unknown or partial (the client went away mid-call, a stream stopped before its
  usage chunk): the larger of the estimate and what was counted, since the provider bills the
  prompt whatever happened to the answer.

A fallback group has its own model limits: they are reserved when the router turns to it, and
of the fallbacks only the group that answered is charged tokens and spend. The requested
group's reservation holds the caller's limits with its model's, so it is always settled as
the call: its model limits count the call's usage even when a fallback answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from keel.gateway.call import Call

if TYPE_CHECKING:
    from keel.governance.policy import RequestPolicy
    from keel.governance.quotas import Quotas, Reservation
    from keel.routing import ModelGroup

__all__ = ["Metering"]

log = logging.getLogger("keel.gateway")


class Metering:
    def __init__(self, policy: RequestPolicy | None, quotas: Quotas | None) -> None:
        self.policy = policy
        self.quotas = quotas
        self._settling: set[asyncio.Task[None]] = set()

    async def reserve(self, call: Call, request: BaseModel, group: ModelGroup) -> None:
        policy, quotas = self.policy, self.quotas
        if policy is None or quotas is None or call.actor is None:
            return
        limits = policy.limits_for(call.actor, group.id, call.resolved)
        if limits:
            card_limit = call.resolved.limits.max_output_tokens if call.resolved else None
            call.estimate = policy.estimate(request, group, card_limit)
            call.reservation = await quotas.reserve(
                limits, tokens=call.estimate.tokens, usd=call.estimate.usd
            )

    def fallback_entry(
        self, call: Call, request: BaseModel
    ) -> Callable[[ModelGroup], Awaitable[None]] | None:
        """For the router: reserve a fallback group's own model limits before it is tried."""
        policy, quotas = self.policy, self.quotas
        if policy is None or quotas is None or call.actor is None:
            return None

        async def enter(group: ModelGroup) -> None:
            limits = policy.model_limits(group.id)
            if limits:
                estimate = policy.estimate(request, group)
                reservation = await quotas.reserve(limits, tokens=estimate.tokens, usd=estimate.usd)
                call.fallback_reservations.append((group.id, reservation))

        return enter

    def settle(self, call: Call) -> None:
        """Schedule the settlements of `call`'s reservations, off the request path."""
        quotas = self.quotas
        if quotas is None:
            return
        settlements: list[Coroutine[Any, Any, None]] = []
        if call.reservation is not None:
            settlements.append(self._settle_one(quotas, call, call.reservation, answered=True))
        for group_id, reservation in call.fallback_reservations:
            answered = group_id == call.trace.group
            settlements.append(self._settle_one(quotas, call, reservation, answered=answered))
        call.reservation = None
        call.fallback_reservations = []
        for settlement in settlements:
            task = asyncio.get_running_loop().create_task(settlement)
            self._settling.add(task)
            task.add_done_callback(self._settled)

    async def drain(self) -> None:
        """Wait for the settlements still running (at shutdown, before the store closes)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def _settle_one(
        self, quotas: Quotas, call: Call, reservation: Reservation, *, answered: bool
    ) -> None:
        paid = _paid(call) if answered else (0, 0.0)
        if paid is None:
            await quotas.release(reservation)
        else:
            await quotas.settle(reservation, tokens=paid[0], usd=paid[1])

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("settling a quota reservation failed: %r", task.exception())


def _paid(call: Call) -> tuple[int, float] | None:
    """(tokens, USD) the call is charged; None to give the whole reservation back."""
    if call.cache_status == "hit":
        return 0, 0.0
    if call.trace.attempts == 0:
        return None
    usage = call.usage
    if call.error is not None and not call.answered:
        return 0, 0.0  # the provider failed or refused: nothing was produced
    counted = usage.prompt_tokens + usage.completion_tokens if usage else 0
    spent = call.cost_usd or 0.0
    complete = usage is not None and usage.prompt_tokens > 0
    if not complete:
        estimate = call.estimate
        if estimate is not None:
            return max(counted, estimate.tokens), max(spent, estimate.usd)
    return counted, spent
