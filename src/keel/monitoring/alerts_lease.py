"""One evaluator across replicas: whoever holds the lease evaluates, the others wait.

With `redis_url` the lease is a Redis key taken with `SET NX PX` and renewed only by its holder;
without it, the one row of `alert_lease`, taken with a conditional UPDATE (only one of several
concurrent UPDATEs can match on PostgreSQL or SQLite). A replica that cannot reach the lease's
store does not evaluate: missing one evaluation beats notifying twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, update

from keel.monitoring.alerts_tables import LEASE_NAME, alert_lease
from keel.store import Database

__all__ = ["DatabaseLease", "EvaluatorLease", "RedisLease", "new_holder"]

log = logging.getLogger("keel.alerts")

# Renew (extend the expiry) only if the key still holds our token; release the same way.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def new_holder() -> str:
    return f"replica-{uuid.uuid4().hex}"


class EvaluatorLease(Protocol):
    holder: str

    async def acquire(self) -> bool: ...

    async def release(self) -> None: ...

    async def aclose(self) -> None: ...


class RedisLease:
    def __init__(self, url: str, key: str, *, ttl_s: float, holder: str) -> None:
        import redis.asyncio as redis

        self.holder = holder
        self._key = key
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._warned_at = 0.0

    async def acquire(self) -> bool:
        try:
            if await self._client.set(self._key, self.holder, nx=True, px=self._ttl_ms):
                return True
            renewed = await self._client.eval(_RENEW, 1, self._key, self.holder, self._ttl_ms)
            return bool(renewed)
        except Exception as exc:  # any client failure: do not evaluate this round
            self._warn(exc)
            return False

    async def release(self) -> None:
        try:
            await self._client.eval(_RELEASE, 1, self._key, self.holder)
        except Exception as exc:
            self._warn(exc)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 60:
            self._warned_at = now
            log.warning("alert lease: Redis unavailable (%s); not evaluating", str(exc)[:200])


class DatabaseLease:
    def __init__(self, database: Database, *, ttl_s: float, holder: str) -> None:
        self.holder = holder
        self._database = database
        self._ttl = timedelta(seconds=ttl_s)

    async def acquire(self) -> bool:
        try:
            return await asyncio.to_thread(self._take)
        except Exception:
            log.exception("alert lease: the database refused the lease update")
            return False

    async def release(self) -> None:
        try:
            await asyncio.to_thread(self._give_back)
        except Exception:
            log.exception("alert lease: could not release the lease")

    async def aclose(self) -> None:
        return None

    def _take(self) -> bool:
        now = datetime.now(UTC)
        columns = alert_lease.c
        statement = (
            update(alert_lease)
            .where(columns.name == LEASE_NAME)
            .where(
                or_(
                    columns.holder == self.holder,
                    columns.holder.is_(None),
                    columns.expires_at.is_(None),
                    columns.expires_at < now,
                )
            )
            .values(holder=self.holder, expires_at=now + self._ttl)
        )
        with self._database.engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def _give_back(self) -> None:
        columns = alert_lease.c
        statement = (
            update(alert_lease)
            .where(columns.name == LEASE_NAME, columns.holder == self.holder)
            .values(holder=None, expires_at=None)
        )
        with self._database.engine.begin() as connection:
            connection.execute(statement)
