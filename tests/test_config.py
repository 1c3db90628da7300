"""Settings: YAML, ${VAR} expansion, precedence, and errors that name file, field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.config_loading import load_settings
from keel.errors import ConfigError
from keel.server import create_app


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keel.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_setup(keel_home: Path) -> None:
    settings = load_settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.home_dir == keel_home
    assert settings.effective_database_url == f"sqlite:///{keel_home / 'keel.db'}"
    assert settings.local_models.chat and settings.local_models.embeddings


def test_yaml_env_expansion_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("KEEL_PORT", "9000")
    path = write(
        tmp_path,
        """
server: {host: 0.0.0.0, port: 7000}
models:
  - id: gpt
    provider: openai
    api_key: ${OPENAI_API_KEY}
    api_base: ${OPENAI_BASE:-https://api.openai.com/v1}
prices:
  gpt: {input: 1, output: 2}
""",
    )
    settings = load_settings(path)
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 9000  # the environment beats the file
    assert load_settings(path, port=9100).server.port == 9100  # flags beat both
    [gpt] = settings.models
    assert gpt.api_key is not None and gpt.api_key.get_secret_value() == "sk-from-env"
    assert gpt.api_base == "https://api.openai.com/v1"
    assert "sk-from-env" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:\n  - {id: x, provider: nope}\n",
            "models.0 (x).provider: Value error, unknown provider",
        ),
        ("models:\n  - {provider: openai}\n", "models.0.id: Field required"),
        ("server: {port: 99999}\n", "server.port: Input should be less than or equal to 65535"),
        ("server: {prot: 1}\n", "server.prot: unknown setting; did you mean 'port'?"),
        ("models:\n  - {id: x, provider: openai, api_key: ${MISSING_KEY}}\n", "MISSING_KEY"),
        ("models: [\n", "not valid YAML"),
        ("- just a list\n", "the top level must be a mapping"),
        (
            "models:\n  - {id: a, provider: openai}\n  - {id: a, provider: openai}\n",
            "declared twice",
        ),
    ],
)
def test_bad_files_name_file_field_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_missing_provider_field_is_caught_before_serving(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  - {id: claude, provider: anthropic}\n")
    with pytest.raises(
        ConfigError, match=r"models\.0 \(claude\)\.api_key: required by provider 'anthropic'"
    ):
        create_app(load_settings(path))


def test_secret_values_never_appear_in_validation_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET", "sk-very-secret")
    path = write(tmp_path, "models:\n  - {id: x, provider: openai, api_key: ${SECRET}, z: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "sk-very-secret" not in str(caught.value)


def test_keel_serve_refuses_a_bad_file_with_exit_code_1(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  - {id: x, provider: nope}\n")
    result = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 1
    assert "models.0 (x).provider" in result.output
    assert "unknown provider 'nope'" in result.output
