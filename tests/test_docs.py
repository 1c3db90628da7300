"""The user documentation under docs/ must keep up with the code it describes."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

import keel.errors
from keel.config import DeploymentConfig, PriceConfig, Settings
from keel.config_loading import load_settings
from keel.providers import load_provider_class, provider_names
from keel.server import create_app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FASTAPI_ROUTES = {"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"}
INTERNAL_FIELDS = {"config_file"}
KEEL_ENV = (
    "KEEL_CONFIG",
    "KEEL_HOME",
    "KEEL_DATABASE_URL",
    "KEEL_HOST",
    "KEEL_PORT",
    "KEEL_LOG_LEVEL",
)


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation refers to (through list, dict, Optional, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _settings_fields() -> set[tuple[str, str]]:
    """(model name, field name) for every field of the settings tree."""
    fields: set[tuple[str, str]] = set()
    seen: set[type[BaseModel]] = set()
    pending: list[type[BaseModel]] = [Settings, DeploymentConfig, PriceConfig]
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            if name in INTERNAL_FIELDS:
                continue
            fields.add((model.__name__, name))
            pending.extend(_models_in(info.annotation))
    return fields


def test_the_settings_walk_reaches_every_section() -> None:
    models = {model for model, _ in _settings_fields()}
    assert models >= {
        "Settings",
        "ServerConfig",
        "LocalModelsConfig",
        "DeploymentConfig",
        "PriceConfig",
    }


def test_every_settings_field_is_documented() -> None:
    page = _read("configuration.md")
    missing = sorted(
        f"{model}.{name}" for model, name in _settings_fields() if f"`{name}`" not in page
    )
    assert not missing, f"docs/configuration.md does not mention: {', '.join(missing)}"


def test_every_environment_variable_is_documented() -> None:
    from keel.config_loading import _Environment

    page = _read("configuration.md")
    names = [f"KEEL_{name.upper()}" for name in _Environment.model_fields]
    missing = [name for name in names if f"`{name}`" not in page]
    assert not missing, f"docs/configuration.md does not mention: {', '.join(missing)}"


def test_every_provider_is_documented() -> None:
    page = _read("providers.md")
    missing = [name for name in provider_names() if f"`{name}`" not in page]
    assert not missing, f"docs/providers.md does not mention: {', '.join(missing)}"


def _route_paths() -> set[str]:
    app = create_app(Settings())
    # Recent FastAPI releases keep included routers as one opaque entry in `app.routes`; the
    # OpenAPI schema lists every API route whatever the version.
    paths = {route.path for route in app.routes if isinstance(getattr(route, "path", None), str)}
    paths |= set(app.openapi()["paths"])
    # `{model_id:path}` is documented as `{model_id}`.
    return {re.sub(r"\{(\w+):\w+\}", r"{\1}", path) for path in paths - FASTAPI_ROUTES}


def test_every_route_is_documented() -> None:
    page = _read("api.md")
    paths = _route_paths()
    assert "/v1/chat/completions" in paths
    missing = sorted(path for path in paths if path not in page)
    assert not missing, f"docs/api.md does not mention: {', '.join(missing)}"


def test_every_error_code_is_documented() -> None:
    page = _read("api.md")
    missing = []
    for name in keel.errors.__all__:
        error = getattr(keel.errors, name)
        if error is keel.errors.ConfigError:
            continue  # raised at start-up; never reaches a client
        if f"| {error.status_code} " not in page and f", {error.status_code} " not in page:
            missing.append(f"{name} status {error.status_code}")
        if f"`{error.error_type}`" not in page:
            missing.append(f"{name} type {error.error_type}")
        if error.default_code is not None and f"`{error.default_code}`" not in page:
            missing.append(f"{name} code {error.default_code}")
    assert not missing, f"docs/api.md does not mention: {', '.join(missing)}"


def _gen_cli_docs() -> ModuleType:
    path = ROOT / "scripts" / "gen_cli_docs.py"
    spec = importlib.util.spec_from_file_location("gen_cli_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date() -> None:
    generator = _gen_cli_docs()
    page = _read("cli.md")
    assert generator.BEGIN in page and generator.END in page
    assert generator.render_page(page) == page, (
        "docs/cli.md is out of date; run: python scripts/gen_cli_docs.py"
    )


def test_cli_reference_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = _gen_cli_docs()
    first = generator.cli_reference()
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("KEEL_URL", "http://elsewhere:1")
    assert generator.cli_reference() == first
    assert "\x1b[" not in first  # no terminal colours


def test_price_table_matches_the_shipped_prices() -> None:
    page = _read("costs.md")
    shipped = yaml.safe_load((ROOT / "src/keel/gateway/prices.yaml").read_text(encoding="utf-8"))
    assert f"`{shipped['version']}`" in page
    missing = []
    for name, price in shipped["models"].items():
        cached = price.get("cached_input")
        cached_text = "—" if cached is None else f"{cached:g}"
        row = f"| `{name}` | {price['input']:g} | {price['output']:g} | {cached_text} |"
        if row not in page:
            missing.append(row)
    assert not missing, "docs/costs.md price rows out of date:\n" + "\n".join(missing)


def _yaml_examples() -> list[tuple[str, int, str]]:
    found = []
    for page in [*PAGES, ROOT / "README.md"]:
        text = page.read_text(encoding="utf-8")
        for index, match in enumerate(re.finditer(r"```yaml\n(.*?)```", text, re.DOTALL)):
            found.append((page.name, index, match.group(1)))
    return found


@pytest.mark.parametrize(
    "example", _yaml_examples(), ids=lambda example: f"{example[0]}#{example[1]}"
)
def test_yaml_examples_are_valid_configurations(
    example: tuple[str, int, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, text = example
    for name in KEEL_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
        monkeypatch.setenv(name, "test-value")
    path = tmp_path / "keel.yaml"
    path.write_text(text, encoding="utf-8")
    settings = load_settings(path)
    create_app(settings)  # checks each provider's required fields; starts nothing
    # Constructing a provider validates its `options` (Gemini's schema_format, ...).
    for deployment in _deployments(settings):
        provider = load_provider_class(deployment.provider)(deployment, None)  # type: ignore[arg-type]
        asyncio.run(provider.aclose())


def _deployments(settings: Settings) -> list[DeploymentConfig]:
    """Every DeploymentConfig in the settings, wherever the settings tree holds one."""
    found: list[DeploymentConfig] = []

    def walk(value: Any) -> None:
        if isinstance(value, DeploymentConfig):
            found.append(value)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(settings)
    return found


def test_links_between_pages_resolve() -> None:
    def slug(heading: str) -> str:
        text = heading.strip().lower().replace("`", "")
        return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")

    anchors = {
        page.name: {
            slug(heading)
            for heading in re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
        }
        for page in PAGES
    }
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([\w.-]*\.md)?(?:#([\w-]+))?\)", text):
            name = target or page.name
            if name not in anchors or (anchor and anchor not in anchors[name]):
                broken.append(f"{page.name} -> {target}#{anchor}")
    assert not broken, "broken links: " + ", ".join(broken)


def test_index_lists_every_page() -> None:
    index = _read("index.md")
    missing = [page.name for page in PAGES if page.name != "index.md" and page.name not in index]
    assert not missing, f"docs/index.md does not link: {', '.join(missing)}"
