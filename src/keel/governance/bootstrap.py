"""The first admin of a server that requires authentication.

With `auth.admin_key` (or KEEL_ADMIN_KEY) set, that key is the way in and nothing is created.
Otherwise, the first start with no admin in the database creates the user `admin` and a key for
it, and writes the key to `<home>/admin.key` (readable by the owner only): the log says where
the file is, never what it holds. Read it once, keep the key somewhere safe, delete the file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from keel.errors import ConflictError
from keel.identity import Actor

if TYPE_CHECKING:
    from keel.config import Settings
    from keel.governance.access import Access
    from keel.governance.audit import AuditLog
    from keel.governance.directory import Directory

__all__ = ["ADMIN_KEY_FILE", "bootstrap_admin"]

log = logging.getLogger("keel.governance")
ADMIN_KEY_FILE = "admin.key"
_SYSTEM = Actor("keel", frozenset({"admin"}), kind="bootstrap")


async def bootstrap_admin(
    directory: Directory, access: Access, settings: Settings, audit: AuditLog
) -> None:
    if settings.auth.admin_key is not None:
        return
    if await asyncio.to_thread(directory.has_admin):
        return
    try:
        _, user = await asyncio.to_thread(lambda: directory.create_user("admin", role="admin"))
    except ConflictError:
        # Another replica got there first, or a non-admin "admin" exists: leave it alone.
        return
    key, secret = await asyncio.to_thread(
        lambda: directory.create_key("admin", name="bootstrap", created_by=_SYSTEM)
    )
    path = settings.home_dir / ADMIN_KEY_FILE
    # A fresh file, owner-only from its first byte: never an existing file's looser mode, and
    # never through a symlink someone left at that path.
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secret + "\n")
    audit.record("user.create", actor=_SYSTEM, target="admin", after=user)
    audit.record("key.create", actor=_SYSTEM, target=key["id"], after=key)
    await access.refresh()
    log.warning(
        "authentication is required and there was no admin: created user 'admin' with key %s…; "
        "the key is in %s (owner-only) — read it once and delete the file",
        key["prefix"],
        path,
    )
