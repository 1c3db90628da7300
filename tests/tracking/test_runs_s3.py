"""Run artifacts in an S3-compatible store: moto's S3 server on loopback, boto3 as the client,
through the embedded store and through a Keel server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from keel.sdk import Keel
from keel.tracking import start_run
from tests.fakes.server import free_port
from tests.tracking.run_helpers import embedded, serve_keel, settings_for

BUCKET = "keel-runs"


@pytest.fixture
def s3_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        server.stop()


def _s3_settings(home: Path, url: str) -> Any:
    artifacts = {"kind": "s3", "bucket": BUCKET, "prefix": "team-a", "endpoint_url": url}
    return settings_for(home, None, tracking={"artifacts": artifacts})


def _stored(url: str, key: str) -> bytes:
    body: bytes = (
        boto3.client("s3", endpoint_url=url).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    )
    return body


def test_artifacts_go_to_the_bucket(keel_home: Path, s3_url: str, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(bytes(range(256)) * 40)
    (model / "config.json").write_text('{"layers": 2}')
    for tracking in embedded(_s3_settings(keel_home, s3_url)):
        with start_run("s3", client=tracking) as run:
            stored = run.log_artifact(model)
            run.log_dict({"accuracy": 0.9}, "metrics.json")
        assert sorted(item["name"] for item in stored) == ["model/config.json", "model/weights.bin"]
        uris = {item["name"]: item["uri"] for item in tracking.get_run(run.id)["artifacts"]}
        assert uris["model/weights.bin"] == f"s3://{BUCKET}/team-a/{run.id}/model/weights.bin"
        assert _stored(s3_url, f"team-a/{run.id}/model/weights.bin") == bytes(range(256)) * 40
        assert tracking.download_artifact(run.id, "metrics.json") == b'{\n  "accuracy": 0.9\n}'
        assert not (keel_home / "artifacts").exists()  # nothing went to the local store


def test_a_server_with_an_s3_store(keel_home: Path, s3_url: str) -> None:
    with serve_keel(_s3_settings(keel_home, s3_url)) as url, Keel(url) as client:
        with start_run("s3", client=client) as run:
            run.log_dict({"rows": [1, 2, 3]}, "eval/rows.json")
        key = f"team-a/{run.id}/eval/rows.json"
        assert _stored(s3_url, key) == b'{\n  "rows": [\n    1,\n    2,\n    3\n  ]\n}'
        served = httpx.get(f"{url}/v1/keel/runs/{run.id}/artifacts/eval/rows.json")
        assert served.status_code == 200
        assert served.headers["content-type"] == "application/json"
        assert served.content == _stored(s3_url, key)
