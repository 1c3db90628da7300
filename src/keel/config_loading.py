"""Building Keel's `Settings`: built-in defaults, then the YAML file (`--config` or
KEEL_CONFIG, with `${VAR}` substituted), then environment variables (KEEL_HOME,
KEEL_DATABASE_URL, KEEL_REDIS_URL, KEEL_HOST, KEEL_PORT, KEEL_LOG_LEVEL, KEEL_ADMIN_KEY), then
command-line flags, each overriding the one before. This is the only module that reads the
environment. A mistake is one `ConfigError` naming the file and field, or the variable or flag,
that holds it — never the value, which may be a secret.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from keel import secrets
from keel.config import Settings, did_you_mean
from keel.errors import ConfigError

__all__ = ["load_settings"]

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Environment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEEL_", extra="ignore")

    home: Path | None = None
    config: Path | None = None
    database_url: str | None = None
    redis_url: str | None = None
    host: str | None = None
    # Text here: a value that is not a port is reported by Settings, naming the variable.
    port: str | None = None
    log_level: str | None = None
    admin_key: str | None = None


def load_settings(
    config_file: Path | None = None, *, host: str | None = None, port: int | None = None
) -> Settings:
    """Build the effective settings; raise ConfigError naming file, field and reason."""
    env = _Environment()
    path = config_file or env.config
    raw: dict[str, Any] = _read_yaml(path) if path else {}
    # Where each overridden value came from, so that a bad one is blamed on its variable or
    # flag rather than on the file.
    overrides: dict[tuple[str, ...], str] = {}
    for key, value, variable in (
        ("home", env.home, "KEEL_HOME"),
        ("database_url", env.database_url, "KEEL_DATABASE_URL"),
        ("redis_url", env.redis_url, "KEEL_REDIS_URL"),
    ):
        if value is not None:
            raw[key] = str(value)
            overrides[(key,)] = variable
    if env.admin_key:
        auth = raw.get("auth") or {}
        if not isinstance(auth, dict):
            raise ConfigError(f"{path}: auth: must be a mapping")
        raw["auth"] = {**auth, "admin_key": env.admin_key}
        overrides[("auth", "admin_key")] = "KEEL_ADMIN_KEY"
    given = {
        "host": (host, "--host") if host else (env.host, "KEEL_HOST"),
        "port": (port, "--port") if port else (env.port, "KEEL_PORT"),
        "log_level": (env.log_level, "KEEL_LOG_LEVEL"),
    }
    server_overrides = {key: value for key, (value, _) in given.items() if value is not None}
    if server_overrides:
        server = raw.get("server") or {}
        if not isinstance(server, dict):
            raise ConfigError(f"{path}: server: must be a mapping")
        raw["server"] = {**server, **server_overrides}
        for key in server_overrides:
            overrides[("server", key)] = given[key][1]
    if path:
        raw["config_file"] = str(path)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, raw, overrides)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    expanded = _expand_env(data, path, ())
    assert isinstance(expanded, dict)
    return expanded


def _expand_env(value: Any, path: Path, location: tuple[str | int, ...]) -> Any:
    if isinstance(value, dict):
        return {key: _expand_env(item, path, (*location, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand_env(item, path, (*location, index)) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found or (found is not None and default is None):
            # Whatever came from the environment may be a credential: never repeat it.
            secrets.register([found])
            return found
        if default is not None:
            return default
        raise ConfigError(f"{path}: {_dotted(location)}: environment variable {name} is not set")

    return _ENV_REFERENCE.sub(substitute, value)


def _dotted(location: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def _describe(
    exc: ValidationError,
    path: Path | None,
    raw: dict[str, Any],
    overrides: dict[tuple[str, ...], str],
) -> str:
    # Messages are built from location and reason only: input values may be secrets.
    lines = []
    for err in exc.errors():
        location = tuple(err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            known = _fields_at(location[:-1])
            message = "unknown setting" + did_you_mean(str(location[-1]), known)
        variable = next(
            (name for key, name in overrides.items() if location[: len(key)] == key), None
        )
        if variable is not None:
            lines.append(f"{variable}: {message}")
        else:
            source = str(path) if path else "settings"
            lines.append(f"{source}: {_named_location(location, raw)}: {message}")
    return "invalid configuration\n" + "\n".join(lines)


def _fields_at(location: tuple[str | int, ...]) -> list[str]:
    """The setting names the section at `location` takes (list indexes and mapping keys are
    stepped over), or none where the location leads to no section."""
    section: type[BaseModel] | None = Settings
    for part in location:
        if section is None:
            return []
        field = section.model_fields.get(part) if isinstance(part, str) else None
        if field is not None:
            section = _section_in(field.annotation)
    return list(section.model_fields) if section is not None else []


def _section_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _section_in(argument)
        if found is not None:
            return found
    return None


def _named_location(location: tuple[str | int, ...], raw: Any) -> str:
    """`groups.0.deployments.1.weight` → `groups.0 (gpt).deployments.1 (gpt-2).weight`."""
    parts = []
    node = raw
    for part in location:
        label = str(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
        if isinstance(part, int) and isinstance(node, dict) and isinstance(node.get("id"), str):
            label = f"{part} ({node['id']})"
        parts.append(label)
    return ".".join(parts) or "(top level)"
