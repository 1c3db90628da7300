"""A newcomer's first minutes: mistakes get one line naming what to fix, never a traceback, and
the first answers are short."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli.app import app
from keel.cli.governance_shared import limits_text
from keel.cli.output import number
from keel.config_loading import load_settings
from keel.errors import ConfigError
from keel.server import create_app
from tests.conftest import remote_settings, running_app
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import serve_on_loopback


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keel.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def serve_output(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["serve", *args], env=env)
    return result.exit_code, result.output


# -- configuration mistakes ---------------------------------------------------------------


def test_a_bad_variable_is_blamed_on_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "server: {port: 9000}\n")
    monkeypatch.setenv("KEEL_LOG_LEVEL", "DEBUG")
    assert load_settings(path).server.log_level == "debug"
    monkeypatch.setenv("KEEL_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "KEEL_LOG_LEVEL: Input should be" in str(caught.value)
    assert str(path) not in str(caught.value)
    monkeypatch.delenv("KEEL_LOG_LEVEL")
    monkeypatch.setenv("KEEL_PORT", "eighty")
    with pytest.raises(ConfigError, match="KEEL_PORT: "):
        load_settings(path)
    with pytest.raises(ConfigError, match="--port: "):
        load_settings(path, port=70000)


def test_a_fallback_may_be_a_bundled_model(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "groups:\n"
        "  - id: chat\n"
        "    deployments: [{provider: openai, model: gpt-4o-mini, api_key: sk-x}]\n"
        "    fallbacks: [smollm2-135m-instruct]\n",
    )
    assert load_settings(path).groups[0].fallbacks == ["smollm2-135m-instruct"]
    off = write(tmp_path, path.read_text() + "local_models: {chat: false}\n")
    with pytest.raises(ConfigError, match="'smollm2-135m-instruct' is not a model id"):
        load_settings(off)


def test_unknown_settings_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "sever: {port: 9000}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert f"{path}: sever: unknown setting; did you mean 'server'?" in str(caught.value)
    nested = write(tmp_path, "models:\n  - {id: x, provider: openai, api_kye: sk-x}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(nested)
    assert "models.0 (x).api_kye: unknown setting; did you mean 'api_key'?" in str(caught.value)


def test_a_misspelled_provider_option_stops_keel_serve(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "models:\n"
        "  - id: g\n"
        "    provider: gemini\n"
        "    api_key: k\n"
        "    options: {schema_fromat: openapi}\n",
    )
    code, output = serve_output("--config", str(path))
    assert code == 1
    assert "models.0 (g).options.schema_fromat: unknown option for provider 'gemini'" in output
    assert "did you mean 'schema_format'?" in output
    assert "Traceback" not in output


def test_a_missing_postgres_database_is_one_line() -> None:
    name = f"keel_missing_{uuid.uuid4().hex[:8]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    code, output = serve_output("--port", "1", env={"KEEL_DATABASE_URL": url})
    assert code == 1
    assert output.strip() == (
        f'Error: database_url: database "{name}" does not exist on 127.0.0.1:5432; create it '
        f"(createdb {name}) or point KEEL_DATABASE_URL elsewhere"
    )


def test_a_jwks_file_without_keys_is_one_line(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}', encoding="utf-8")
    path = write(
        tmp_path,
        "local_models: {chat: false, embeddings: false}\n"
        "auth:\n"
        f"  oidc: [{{issuer: https://id.example.com, audience: keel, jwks_file: {jwks}}}]\n",
    )
    code, output = serve_output("--config", str(path), "--port", "1")
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in output
    assert lines[0].startswith("Error: auth.oidc: issuer 'https://id.example.com': jwks_file")
    assert str(jwks) in lines[0]


# -- request bodies -----------------------------------------------------------------------


async def test_bodies_that_are_not_json_objects_are_named_as_such(tmp_path: Path) -> None:
    async with running_app(remote_settings(tmp_path, [])) as (_, client):
        alias = "/v1/keel/registry/models/m/aliases/champion"
        # What `curl -X PUT ... -d '{"version": 1}'` sends: a form content type.
        form = await client.put(
            alias,
            content=b'{"version": 1}',
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 415
        assert "send content-type: application/json" in form.json()["error"]["message"]
        for body in (b"[1]", b'"champion"', b"1"):
            answer = await client.put(
                alias, content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 400, body
            assert answer.json()["error"]["message"] == "the body must be a JSON object"
            assert answer.json()["error"]["param"] is None
        broken = await client.put(
            alias, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == "invalid_json"


# -- local model files ----------------------------------------------------------------------


async def test_a_missing_model_file_is_named_by_readyz_and_never_retried(
    tmp_path: Path,
) -> None:
    gguf = tmp_path / "absent.gguf"
    folder = tmp_path / "absent-embedder"
    settings = remote_settings(
        tmp_path,
        [
            {"id": "mine", "provider": "llama_cpp", "model_path": str(gguf)},
            {
                "id": "vectors",
                "provider": "sentence_transformers",
                "kind": "embedding",
                "model_path": str(folder),
            },
        ],
    )
    async with running_app(settings) as (app, client):
        if app.state.keel.warmup is not None:
            await app.state.keel.warmup
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["local_models"] == {
            "mine": f"not loadable: GGUF file not found: {gguf}",
            "vectors": f"not loadable: model directory not found: {folder}",
        }
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "mine", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 503
        assert chat.json()["error"]["code"] == "model_not_loadable"
        assert str(gguf) in chat.json()["error"]["message"]
        assert chat.headers["x-keel-attempts"] == "1"
        embedded = await client.post("/v1/embeddings", json={"model": "vectors", "input": "x"})
        assert embedded.status_code == 503
        assert str(folder) in embedded.json()["error"]["message"]
        assert embedded.headers["x-keel-attempts"] == "1"


# -- the CLI ----------------------------------------------------------------------------------


def test_numbers_print_as_people_write_them() -> None:
    assert number(2e6) == "2000000"
    assert number(2_000_000) == "2000000"
    assert number(0.25) == "0.25"
    assert number(1e-7) == "0.0000001"
    assert limits_text({"tokens_per_day": 2e6, "usd_per_day": 12.5}) == (
        "tokens_per_day=2000000, usd_per_day=12.5"
    )


@pytest.fixture
def keel_url(tmp_path: Path, fake_openai_url: str) -> Iterator[str]:
    settings = remote_settings(
        tmp_path, [{"id": "fake-model", "provider": "openai", "api_base": fake_openai_url}]
    )
    with serve_on_loopback(create_app(settings), lifespan="on") as url:
        yield url


def test_keel_chat_asks_for_a_bounded_answer(keel_url: str, fake_openai: FakeOpenAI) -> None:
    result = CliRunner().invoke(
        app, ["chat", "What is the capital of France?", "-m", "fake-model", "--url", keel_url]
    )
    assert result.exit_code == 0, result.output
    assert fake_openai.last.body["max_tokens"] == 256
    result = CliRunner().invoke(
        app, ["chat", "hi", "-m", "fake-model", "--max-tokens", "9", "--url", keel_url]
    )
    assert result.exit_code == 0, result.output
    assert fake_openai.last.body["max_tokens"] == 9


def test_keel_serve_says_what_it_runs_on(tmp_path: Path) -> None:
    from keel.cli.serve import banner

    settings = load_settings(write(tmp_path, "server: {host: 0.0.0.0}\n"))
    home = settings.home_dir  # KEEL_HOME, set for every test
    key_file = tmp_path / "admin.key"
    key_file.write_text("secret\n", encoding="utf-8")
    text = banner(settings, key_file, created=True)
    assert text.splitlines()[0] == "Keel on http://0.0.0.0:8080"
    assert f"state:     {home}\n" in text
    assert f"database:  sqlite ({home / 'keel.db'})" in text
    assert "auth:      on" in text
    assert f"admin key: {key_file} (created now;" in text
    assert "secret" not in text.replace("keep it safe", "")
    local = load_settings(write(tmp_path, "server: {port: 8080}\n"))
    assert "auth:      off" in banner(local, key_file, created=False)
    assert "admin key" not in banner(local, key_file, created=False)
    remote_db = load_settings(
        write(tmp_path, "database_url: postgresql://keel:hunter2@db.internal:5433/keel\n")
    )
    described = banner(remote_db, key_file, created=False)
    assert "database:  postgresql (db.internal:5433/keel)" in described
    assert "hunter2" not in described


# -- the bundled model's sampling -----------------------------------------------------------


def test_sampling_defaults_fill_only_what_the_request_leaves_unset() -> None:
    # A narrow test of the translation: llama.cpp's sampling is not reproducible enough
    # between calls to observe from the answers.
    from keel.config import DeploymentConfig
    from keel.providers.local_llama import LlamaCppProvider
    from keel.schemas import ChatCompletionRequest

    def arguments(deployment: dict[str, object], **params: object) -> dict[str, object]:
        provider = LlamaCppProvider(DeploymentConfig.model_validate(deployment), None)  # type: ignore[arg-type]
        request = ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], **params}
        )
        return provider._chat_arguments(request)

    bundled = arguments({"id": "m", "provider": "llama_cpp"}, temperature=1.5)
    assert (bundled["temperature"], bundled["top_p"], bundled["repeat_penalty"]) == (1.5, 0.9, 1.1)
    tuned = arguments({"id": "m", "provider": "llama_cpp", "options": {"repeat_penalty": 1.3}})
    assert (tuned["temperature"], tuned["repeat_penalty"]) == (0.2, 1.3)
    other = arguments({"id": "m", "provider": "llama_cpp", "model_path": "/models/x.gguf"})
    assert not {"temperature", "top_p", "repeat_penalty"} & set(other)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            "{repeat_penalti: 1.2}",
            "options.repeat_penalti: unknown option for provider "
            "'llama_cpp'; did you mean 'repeat_penalty'?",
        ),
        ("{top_p: high}", "options.top_p: must be a number, 0 or more"),
    ],
)
def test_llama_options_are_checked_at_start(tmp_path: Path, options: str, message: str) -> None:
    path = write(tmp_path, f"models:\n  - {{id: mine, provider: llama_cpp, options: {options}}}\n")
    code, output = serve_output("--config", str(path))
    assert code == 1
    assert message in output
