"""The registry as the request path sees it: an in-memory snapshot, never a database query.

The snapshot is reloaded (in a worker thread) after every registry write made through this
server, and every `refresh_interval_s` to pick up writes made by other replicas.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keel.errors import ModelNotFoundError

if TYPE_CHECKING:
    from keel.registry.cards import CardLimits
    from keel.registry.models import ModelSnapshot
    from keel.registry.service import Registry

__all__ = ["RegistryView", "ResolvedModel"]

log = logging.getLogger("keel.registry")


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    reference: str
    name: str
    version: int
    stage: str
    gateway_model: str | None
    limits: CardLimits


class RegistryView:
    def __init__(self, registry: Registry, *, refresh_interval_s: float = 5.0) -> None:
        self._registry = registry
        self._interval = refresh_interval_s
        self._models: dict[str, ModelSnapshot] = {}
        self._poller: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # serve the gateway without the registry; the poller retries
            log.error("loading the registry failed: %s", type(exc).__name__)
        self._poller = asyncio.create_task(self._poll(), name="keel-registry-view")

    async def refresh(self) -> None:
        self._models = await asyncio.to_thread(self._registry.snapshot)

    def changed(self) -> None:
        """A write just happened here: reload soon, without making the writer wait. A reload
        already running may have read before this write, so one more follows it."""
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._reload_until_clean())

    async def _reload_until_clean(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("reloading the registry failed: %s", type(exc).__name__)
                return

    async def settle(self) -> None:
        """Wait for a reload started by `changed()` (tests, and callers that read their write)."""
        if self._pending is not None:
            await self._pending

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception as exc:  # keep serving the last good snapshot
                log.warning("reloading the registry failed: %s", type(exc).__name__)

    async def close(self) -> None:
        for task in (self._poller, self._pending):
            if task is not None and not task.done():
                task.cancel()

    def resolve(self, reference: str) -> ResolvedModel | None:
        """`name`, `name@alias` or `name@3`; None when `name` is not a registry model."""
        name, _, ref = reference.partition("@")
        model = self._models.get(name)
        if model is None:
            return None
        if ref == "":
            version = model.aliases.get("production") or model.latest
        elif ref.isascii() and ref.isdigit():
            version = int(ref)
        elif ref in model.aliases:
            version = model.aliases[ref]
        else:
            raise ModelNotFoundError(f"registry model {name!r} has no alias {ref!r}", param="model")
        found = model.versions.get(version)
        if found is None:
            raise ModelNotFoundError(
                f"registry model {name!r} has no version {version}", param="model"
            )
        if model.archived or found.stage == "archived":
            raise ModelNotFoundError(
                f"registry model {name}@{version} is archived and no longer served",
                param="model",
            )
        return ResolvedModel(
            reference=reference,
            name=name,
            version=version,
            stage=found.stage,
            gateway_model=found.gateway_model,
            limits=found.limits,
        )
