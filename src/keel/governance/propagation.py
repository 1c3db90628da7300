"""Directory changes pushed to every replica through Redis pub/sub.

Each directory write bumps `governance_state.version` (see `keel.governance.directory`). Once
it commits, the replica that made it publishes the new version on one channel,
`<redis_prefix>governance:version`; every replica subscribes to it and reloads its snapshot
as soon as a message names a version newer than the one it holds. A revoked key is then
refused everywhere within one message and one reload, instead of within a polling period.

Polling the version row stays in place as the fallback, at `auth.refresh_interval_s`: a
message lost, a replica unsubscribed or Redis down only brings back the polling bound. So
nothing here may hurt the server: publishing is handed to a background task (a write never
waits on Redis), the subscriber reconnects with backoff and logs an outage once, and after
every (re)subscription the replica checks the version row, since messages sent while it was
away are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["ChangeFeed", "change_channel"]

log = logging.getLogger("keel.governance")

# Called with the version a message announced, or None after a (re)subscription, when any
# change may have been missed.
ChangeListener = Callable[[int | None], Awaitable[None]]

_MAX_PAYLOAD = 32  # a version is a decimal integer; anything longer is not ours


def change_channel(redis_prefix: str) -> str:
    return f"{redis_prefix}governance:version"


class ChangeFeed:
    """One per process: publishes this replica's directory versions and listens for others'.

    `announce` may be called from any thread (directory writes run in worker threads); the
    feed must be created on the event loop it will run on.
    """

    def __init__(
        self,
        url: str,
        *,
        channel: str,
        client_name: str = "keel-governance",
        timeout_s: float = 2.0,
        keepalive_s: float = 5.0,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.channel = channel
        self._loop = asyncio.get_running_loop()
        self._keepalive_s = keepalive_s
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        # No retries inside the client: the loops below are the retry policy, with backoff.
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            client_name=client_name,  # how CLIENT LIST shows these connections
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        self._listener: ChangeListener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Publishing: only the newest version matters, so announcements collapse into one.
        self._to_publish = -1
        self._published = -1
        self._publish_wanted = asyncio.Event()
        self._publish_failing = False
        # Receiving: what arrived while the listener was still busy with an earlier message.
        self._heard: int | None = None
        self._gap = False
        self._handing_on: asyncio.Task[None] | None = None
        self.subscribed = False
        self._outage = False  # logged once when it starts, once when it ends

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, listener: ChangeListener) -> None:
        """Start publishing and listening. Never waits on Redis: a Redis that is down now is
        retried in the background while polling carries the changes."""
        self._listener = listener
        self._tasks = [
            asyncio.create_task(self._publishing(), name="keel-governance-publish"),
            asyncio.create_task(self._listening(), name="keel-governance-subscribe"),
        ]

    async def aclose(self) -> None:
        tasks = [*self._tasks, *([self._handing_on] if self._handing_on else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self._client.aclose()

    # -- publishing -----------------------------------------------------------------------

    def announce(self, version: int) -> None:
        """A directory write committed and left the version at `version`. Thread-safe;
        returns at once."""
        with contextlib.suppress(RuntimeError):  # the loop is closing: the server is stopping
            self._loop.call_soon_threadsafe(self._want_published, version)

    def _want_published(self, version: int) -> None:
        if version > self._to_publish:
            self._to_publish = version
            self._publish_wanted.set()

    async def _publishing(self) -> None:
        while True:
            await self._publish_wanted.wait()
            self._publish_wanted.clear()
            version = self._to_publish
            if version <= self._published:
                continue
            try:
                await self._client.publish(self.channel, str(version))
            except Exception as exc:  # the other replicas' polling will pick the change up
                if not self._publish_failing:
                    self._publish_failing = True
                    log.warning(
                        "could not announce a key or policy change through Redis (%s); other "
                        "replicas will see it when they next poll",
                        _describe(exc),
                    )
                else:
                    log.debug("announcing version %d failed: %s", version, _describe(exc))
                continue
            self._published = version
            if self._publish_failing:
                self._publish_failing = False
                log.info("announcing key and policy changes through Redis again")

    # -- listening ------------------------------------------------------------------------

    async def _listening(self) -> None:
        backoff_s = self._min_backoff_s
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.subscribed:  # it worked for a while: start the backoff over
                    backoff_s = self._min_backoff_s
                self.subscribed = False
                if not self._outage:
                    self._outage = True
                    log.warning(
                        "not subscribed to key and policy changes in Redis (%s); polling for "
                        "them until the subscription is back",
                        _describe(exc),
                    )
                else:
                    log.debug("subscribing to key and policy changes failed: %s", _describe(exc))
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self._max_backoff_s)

    async def _listen_once(self) -> None:
        """Subscribe and hand messages on until the connection fails (raising)."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self.subscribed = True
            if self._outage:
                self._outage = False
                log.info("subscribed to key and policy changes in Redis again")
            self._hand_on(None)  # messages sent while unsubscribed are lost: check the row
            heard_at = pinged_at = self._loop.time()
            while True:
                message = await pubsub.get_message(timeout=self._keepalive_s)
                now = self._loop.time()
                if message is not None:
                    heard_at = now
                    if message["type"] == "message":
                        self._received(message["data"])
                if now - heard_at > 3 * self._keepalive_s:
                    raise ConnectionError("Redis stopped answering on the subscription")
                if now - pinged_at >= self._keepalive_s:
                    # A quiet channel must still prove the connection alive: the answer comes
                    # back as a message and counts as hearing from Redis.
                    pinged_at = now
                    await pubsub.ping()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _received(self, data: Any) -> None:
        text = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
        if len(text) > _MAX_PAYLOAD or not text.isdigit():
            log.debug("ignoring a malformed message on %s", self.channel)
            return
        self._hand_on(int(text))

    def _hand_on(self, version: int | None) -> None:
        """Pass a message to the listener without blocking the subscription: one call at a
        time, and what arrives meanwhile collapses into one more call."""
        if version is None:
            self._gap = True
        elif self._heard is None or version > self._heard:
            self._heard = version
        if self._handing_on is None or self._handing_on.done():
            self._handing_on = asyncio.create_task(self._handing_on_loop())

    async def _handing_on_loop(self) -> None:
        while self._listener is not None and (self._gap or self._heard is not None):
            version = None if self._gap else self._heard
            self._gap, self._heard = False, None
            try:
                await self._listener(version)
            except Exception as exc:  # the poller is still there; keep listening
                log.warning("reloading keys and policies after a change failed: %s", exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
