"""The shared second tier: Redis, so that several Keel replicas answer from one cache.

Exact entries are strings `<prefix>x:<key>` holding an 8-byte expiry (float64, seconds since
the epoch) followed by the response JSON, set with a Redis TTL as well: Redis reclaims them, and
the stored expiry lets a reader with an injected clock judge them the same way the memory tier
does. Semantic entries are appended to one Redis stream per scope, `<prefix>s:<scope>`; each
replica reads a stream from the last id it has seen (`XRANGE (id +`), so it picks up what other
replicas stored without re-reading everything. Streams are capped (`MAXLEN ~`) and expire when
their newest entry would.
"""

from __future__ import annotations

import struct
from typing import Any, cast

import redis.asyncio as redis

from keel.cache.tier import StoredVector

__all__ = ["RedisTier"]

_EXPIRY = struct.Struct("<d")
_READ_BATCH = 500


class RedisTier:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "keel:cache:",
        timeout_s: float = 0.5,
        stream_max_entries: int = 10_000,
    ) -> None:
        self.prefix = prefix
        self._stream_max_entries = stream_max_entries
        # A short socket timeout: a Redis that hangs must cost a request a cache miss, not a
        # stall. The pool is shared by lookups and background writes.
        self.client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._closed = False

    def _exact_key(self, key: str) -> str:
        return f"{self.prefix}x:{key}"

    def _stream_key(self, scope: str) -> str:
        return f"{self.prefix}s:{scope}"

    async def get(self, key: str) -> tuple[bytes, float] | None:
        raw = await self.client.get(self._exact_key(key))
        if not isinstance(raw, bytes) or len(raw) < _EXPIRY.size:
            return None
        (expires_at,) = _EXPIRY.unpack_from(raw)
        return raw[_EXPIRY.size :], expires_at

    async def put(self, key: str, payload: bytes, expires_at: float, ttl_s: float) -> None:
        await self.client.set(
            self._exact_key(key),
            _EXPIRY.pack(expires_at) + payload,
            px=max(1, int(ttl_s * 1000)),
        )

    async def append_vector(self, scope: str, record: StoredVector, ttl_s: float) -> None:
        stream = self._stream_key(scope)
        fields: dict[Any, Any] = {
            "i": record.entry_id,
            "c": str(record.context),
            "x": repr(record.expires_at),
            "v": record.vector,
            "r": record.response,
            "p": record.prompt.encode(),
        }
        seconds = max(1, int(ttl_s) + 1)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xadd(stream, fields, maxlen=self._stream_max_entries, approximate=True)
            # NX sets a TTL on a new stream; GT then only ever lengthens it, so the stream lives
            # as long as its longest-lived entry.
            pipe.expire(stream, seconds, nx=True)
            pipe.expire(stream, seconds, gt=True)
            await pipe.execute()

    async def read_vectors(
        self, scope: str, cursor: str | None, now: float
    ) -> tuple[list[StoredVector], str | None]:
        stream = self._stream_key(scope)
        records: list[StoredVector] = []
        while True:
            start = "-" if cursor is None else f"({cursor}"
            # The client is built without decode_responses, so ids and fields come as bytes.
            batch = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                await self.client.xrange(stream, min=start, max="+", count=_READ_BATCH),
            )
            for stream_id, fields in batch:
                cursor = stream_id.decode()
                expires_at = float(fields[b"x"])
                if expires_at > now:
                    records.append(
                        StoredVector(
                            entry_id=fields[b"i"].decode(),
                            context=int(fields[b"c"]),
                            vector=fields[b"v"],
                            response=fields[b"r"],
                            expires_at=expires_at,
                            prompt=fields.get(b"p", b"").decode(errors="replace"),
                        )
                    )
            if len(batch) < _READ_BATCH:
                return records, cursor

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.client.aclose()
