"""Prompt templates: Jinja2 (sandboxed, strict about undefined variables), a text prompt or a
list of chat messages, versioned by content digest with a version number per name, and aliased
like registry models (`prompt@production`, `prompt@3`), every alias move kept as history.

Synchronous: the server calls it through `asyncio.to_thread`; each method is one transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from keel.errors import ConflictError, InvalidRequestError, NotFoundError
from keel.store.database import Database
from keel.tracking import library_tables as t
from keel.tracking.references import (
    canonical_digest,
    checked_alias,
    checked_name,
    split_ref,
    utc,
)

__all__ = [
    "PromptAliasMove",
    "PromptStore",
    "PromptSummary",
    "PromptVersion",
    "Template",
    "check_template",
    "missing_fields",
]

Template = str | list[dict[str, str]]

ROLES = ("system", "developer", "user", "assistant")
MAX_TEMPLATE_CHARS = 200_000
_P, _V, _A, _H = t.prompts.c, t.prompt_versions.c, t.prompt_aliases.c, t.prompt_alias_history.c


def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Immutable sandbox: a template can't reach Python internals or mutate what it is given.
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


def check_template(template: Any) -> tuple[Template, set[str]]:
    """The template, validated, and the variables it uses (`jinja2.meta`). Syntax errors and
    malformed messages are InvalidRequestErrors naming the place."""
    from jinja2 import TemplateSyntaxError, meta

    if isinstance(template, str):
        texts = [("template", template)]
        clean: Template = template
    elif isinstance(template, list) and template:
        texts, messages = [], []
        for index, message in enumerate(template):
            where = f"template[{index}]"
            if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
                raise InvalidRequestError(
                    f"{where}: a message is an object with role and content", param=where
                )
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise InvalidRequestError(
                    f"{where}.role: one of {', '.join(ROLES)}, got {role!r}", param=f"{where}.role"
                )
            if not isinstance(content, str):
                raise InvalidRequestError(
                    f"{where}.content: a template string", param=f"{where}.content"
                )
            texts.append((f"{where}.content", content))
            messages.append({key: str(value) for key, value in message.items()})
        clean = messages
    else:
        raise InvalidRequestError(
            "template: a text template or a non-empty list of chat messages", param="template"
        )
    if sum(len(text) for _, text in texts) > MAX_TEMPLATE_CHARS:
        raise InvalidRequestError(
            f"template: longer than {MAX_TEMPLATE_CHARS} characters", param="template"
        )
    environment = _environment()
    variables: set[str] = set()
    for where, text in texts:
        if "\x00" in text:
            raise InvalidRequestError(f"{where}: NUL characters are not allowed", param=where)
        try:
            variables |= meta.find_undeclared_variables(environment.parse(text))
        except TemplateSyntaxError as exc:
            raise InvalidRequestError(
                f"{where}: template syntax error on line {exc.lineno}: {exc.message}", param=where
            ) from None
    return clean, variables


@dataclass(slots=True)
class PromptVersion:
    name: str
    version: int
    digest: str
    template: Template
    variables: set[str]
    description: str | None = None
    created_by: str = "system"
    created_at: datetime | None = None
    aliases: list[str] = field(default_factory=list)
    # False when `add` found the same content already stored as this version.
    created: bool = True

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def is_chat(self) -> bool:
        return isinstance(self.template, list)

    def missing(self, variables: dict[str, Any]) -> list[str]:
        """The variables the template uses that `variables` lacks, sorted."""
        return sorted(self.variables - set(variables))

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages with the variables filled in; a text template is one user message."""
        from jinja2.exceptions import SecurityError, TemplateError, UndefinedError

        if not isinstance(variables, dict):
            raise InvalidRequestError("variables: an object of name → value", param="variables")
        if missing := self.missing(variables):
            names = ", ".join(repr(name) for name in missing)
            raise InvalidRequestError(
                f"prompt {self.ref}: missing variable {names}",
                param="variables",
                code="missing_variable",
            )
        sources = (
            [(m["role"], m["content"]) for m in self.template]
            if isinstance(self.template, list)
            else [("user", self.template)]
        )
        environment = _environment()
        rendered = []
        for role, source in sources:
            try:
                content = environment.from_string(source).render(variables)
            except SecurityError as exc:
                raise InvalidRequestError(
                    f"prompt {self.ref}: refused by the sandbox: {exc}", param="template"
                ) from None
            except UndefinedError as exc:
                raise InvalidRequestError(
                    f"prompt {self.ref}: {exc.message}", param="variables", code="missing_variable"
                ) from None
            except (TemplateError, ArithmeticError, TypeError, ValueError) as exc:
                raise InvalidRequestError(
                    f"prompt {self.ref}: cannot render: {exc}", param="variables"
                ) from None
            rendered.append({"role": role, "content": content})
        return rendered


def missing_fields(prompt: PromptVersion, rows: Iterable[dict[str, Any]]) -> list[str]:
    """One line per row that lacks a variable the prompt uses ("row 7 lacks field 'question'"),
    rows counted from 1, so a suite can refuse a dataset before making any call."""
    problems = []
    for number, row in enumerate(rows, start=1):
        for name in prompt.missing(row):
            problems.append(f"row {number} lacks field {name!r}")
    return problems


@dataclass(slots=True)
class PromptSummary:
    name: str
    latest_version: int
    versions: int
    aliases: dict[str, int]
    variables: list[str]
    description: str | None
    created_by: str
    created_at: datetime


@dataclass(slots=True)
class PromptAliasMove:
    name: str
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    at: datetime


class PromptStore:
    def __init__(
        self, database: Database, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.database = database
        self._clock = clock

    # --- writes -----------------------------------------------------------------------------

    def add(
        self,
        name: str,
        template: Any,
        *,
        description: str | None = None,
        variables: Iterable[str] | None = None,
        actor: str = "system",
    ) -> PromptVersion:
        """A new version of `name` (created on first use). The same content as an existing
        version is that version again (`created` is False), not a new number. `variables`
        declares the names the template may use; a template that uses another is refused."""
        checked_name(name, "prompt")
        clean, used = check_template(template)
        if variables is not None:
            declared = set(variables)
            if undeclared := sorted(used - declared):
                raise InvalidRequestError(
                    f"template uses {', '.join(map(repr, undeclared))}, which "
                    f"{'is' if len(undeclared) == 1 else 'are'} not declared in variables",
                    param="variables",
                )
            used = declared
        digest = canonical_digest({"template": clean, "variables": sorted(used)})
        for _ in range(3):
            try:
                with self.database.engine.begin() as conn:
                    now = self._clock()
                    exists = conn.execute(
                        select(_P.name).where(_P.name == name).with_for_update()
                    ).first()
                    if exists is None:
                        conn.execute(
                            insert(t.prompts).values(name=name, created_by=actor, created_at=now)
                        )
                    same = conn.execute(
                        select(t.prompt_versions).where(_V.prompt == name, _V.digest == digest)
                    ).first()
                    if same is not None:
                        found = self._version_of(conn, same)
                        found.created = False
                        return found
                    top = conn.execute(
                        select(func.max(_V.version)).where(_V.prompt == name)
                    ).scalar_one()
                    number: int = (top or 0) + 1
                    values = {
                        "prompt": name,
                        "version": number,
                        "digest": digest,
                        "template": clean,
                        "variables": sorted(used),
                        "description": description,
                        "created_by": actor,
                        "created_at": now,
                    }
                    conn.execute(insert(t.prompt_versions).values(**values))
                return PromptVersion(name, number, digest, clean, used, description, actor, now)
            except IntegrityError:  # a concurrent writer took the name or the number
                continue
        raise ConflictError(f"could not add a version to prompt {name!r}: too many writers")

    def set_alias(
        self, name: str, alias: str, version: int, *, actor: str = "system"
    ) -> PromptAliasMove:
        """Point `name@alias` at `version`; the move is kept in the alias history."""
        checked_alias(alias)
        with self.database.engine.begin() as conn:
            self._version_row(conn, name, version)
            where = (_A.prompt == name) & (_A.alias == alias)
            current = conn.execute(
                select(_A.version).where(where).with_for_update()
            ).scalar_one_or_none()
            now = self._clock()
            values = {"version": version, "updated_by": actor, "updated_at": now}
            lost = ConflictError(f"{name}@{alias} was moved concurrently", code="alias_changed")
            if current is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(t.prompt_aliases).values(prompt=name, alias=alias, **values)
                        )
                except IntegrityError as exc:
                    raise lost from exc
            else:
                moved = conn.execute(
                    update(t.prompt_aliases).where(where, _A.version == current).values(**values)
                )
                if moved.rowcount != 1:
                    raise lost
            entry = {"prompt": name, "alias": alias, "from_version": current}
            entry |= {"to_version": version, "actor": actor, "at": now}
            conn.execute(insert(t.prompt_alias_history).values(**entry))
        return PromptAliasMove(name, alias, current, version, actor, now)

    # --- reads ------------------------------------------------------------------------------

    def get(self, ref: str) -> PromptVersion:
        """`name` (its `production` alias if set, else the latest), `name@3`, `name@alias`
        or `name@latest`."""
        name, at = split_ref(ref, "prompt")
        with self.database.engine.connect() as conn:
            self._prompt_row(conn, name)
            if isinstance(at, int):
                return self._version_of(conn, self._version_row(conn, name, at))
            if at is None or at == "latest":
                number = None if at else self._alias(conn, name, "production")
                if number is None:
                    number = conn.execute(
                        select(func.max(_V.version)).where(_V.prompt == name)
                    ).scalar_one()
            else:
                number = self._alias(conn, name, at)
                if number is None:
                    raise NotFoundError(f"prompt {name!r} has no alias {at!r}")
            return self._version_of(conn, self._version_row(conn, name, number))

    def versions(self, name: str) -> builtins.list[PromptVersion]:
        with self.database.engine.connect() as conn:
            self._prompt_row(conn, name)
            rows = conn.execute(
                select(t.prompt_versions).where(_V.prompt == name).order_by(_V.version)
            )
            aliases = self._aliases(conn, name)
            return [self._version_of(conn, row, aliases) for row in rows]

    def list(self) -> builtins.list[PromptSummary]:
        with self.database.engine.connect() as conn:
            names = list(conn.execute(select(t.prompts).order_by(_P.name)))
            versions = list(conn.execute(select(t.prompt_versions).order_by(_V.version)))
            aliases = list(conn.execute(select(t.prompt_aliases).order_by(_A.alias)))
        summaries = []
        for row in names:
            own = [version for version in versions if version.prompt == row.name]
            if not own:
                continue
            latest = own[-1]
            summaries.append(
                PromptSummary(
                    name=row.name,
                    latest_version=latest.version,
                    versions=len(own),
                    aliases={a.alias: a.version for a in aliases if a.prompt == row.name},
                    variables=list(latest.variables),
                    description=latest.description,
                    created_by=row.created_by,
                    created_at=utc(row.created_at),
                )
            )
        return summaries

    def alias_history(self, name: str, alias: str | None = None) -> builtins.list[PromptAliasMove]:
        with self.database.engine.connect() as conn:
            self._prompt_row(conn, name)
            query = select(t.prompt_alias_history).where(_H.prompt == name)
            if alias is not None:
                query = query.where(_H.alias == alias)
            rows = conn.execute(query.order_by(_H.id))
            return [
                PromptAliasMove(r.prompt, r.alias, r.from_version, r.to_version, r.actor, utc(r.at))
                for r in rows
            ]

    # --- plumbing ---------------------------------------------------------------------------

    def _prompt_row(self, conn: Connection, name: str) -> Row[Any]:
        row = conn.execute(select(t.prompts).where(_P.name == name)).first()
        if row is None:
            raise NotFoundError(f"prompt {name!r} not found")
        return row

    def _version_row(self, conn: Connection, name: str, number: int) -> Row[Any]:
        self._prompt_row(conn, name)
        query = select(t.prompt_versions).where(_V.prompt == name, _V.version == number)
        row = conn.execute(query).first()
        if row is None:
            raise NotFoundError(f"prompt {name!r} has no version {number}")
        return row

    def _alias(self, conn: Connection, name: str, alias: str) -> int | None:
        query = select(_A.version).where(_A.prompt == name, _A.alias == alias)
        found: int | None = conn.execute(query).scalar_one_or_none()
        return found

    def _aliases(self, conn: Connection, name: str) -> dict[int, builtins.list[str]]:
        found: dict[int, builtins.list[str]] = {}
        rows = conn.execute(
            select(_A.alias, _A.version).where(_A.prompt == name).order_by(_A.alias)
        )
        for alias, version in rows:
            found.setdefault(version, []).append(alias)
        return found

    def _version_of(
        self, conn: Connection, row: Row[Any], aliases: dict[int, builtins.list[str]] | None = None
    ) -> PromptVersion:
        if aliases is None:
            aliases = self._aliases(conn, row.prompt)
        return PromptVersion(
            name=row.prompt,
            version=row.version,
            digest=row.digest,
            template=row.template,
            variables=set(row.variables),
            description=row.description,
            created_by=row.created_by,
            created_at=utc(row.created_at),
            aliases=aliases.get(row.version, []),
        )
