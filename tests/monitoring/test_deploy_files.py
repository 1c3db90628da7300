"""The Prometheus and Grafana files under deploy/: they parse, Prometheus's own checker accepts
them, they fit together, and every metric they query is one a real Keel exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import remote_settings, running_app
from tests.fakes.openai import ErrorReply, FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
DATASOURCE_UID = "keel-prometheus"
# Metric names in PromQL; a recording rule's own name (`keel:...`) is not one Keel exports.
METRIC_NAME = re.compile(r"(?<![\w:])keel_[a-z0-9_]+")
DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)$")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _dashboard(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [
        target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])
    ]
    queries += [variable["query"]["query"] for variable in dashboard["templating"]["list"]]
    return queries


def _rules() -> list[dict[str, Any]]:
    return [
        rule for path in RULE_FILES for group in _yaml(path)["groups"] for rule in group["rules"]
    ]


def test_the_five_dashboards_are_there_and_provisioning_ready() -> None:
    uids = {_dashboard(path)["uid"] for path in DASHBOARDS}
    assert uids == {
        "keel-overview",
        "keel-models",
        "keel-teams-cost",
        "keel-cache-routing",
        "keel-governance",
    }
    for path in DASHBOARDS:
        dashboard = _dashboard(path)
        assert dashboard["title"].startswith("Keel / ")
        panels = _panels(dashboard)
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), path.name
        graphs = [panel for panel in panels if panel["type"] != "row"]
        assert len(graphs) >= 6, path.name
        for panel in graphs:
            assert panel["targets"], f"{path.name}: {panel['title']}"
            assert panel["datasource"]["uid"] == DATASOURCE_UID
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID
                assert target["expr"].strip()
            position = panel["gridPos"]
            assert position["x"] + position["w"] <= 24
        names = [variable["name"] for variable in dashboard["templating"]["list"]]
        assert "instance" in names  # every dashboard tells the replicas apart


def test_grafana_provisioning_points_at_the_dashboards_and_the_datasource() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = _yaml(provisioning / "datasources" / "prometheus.yaml")
    [datasource] = datasources["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    providers = _yaml(provisioning / "dashboards" / "keel.yaml")
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    dashboards_path = provider["options"]["path"]

    compose = _yaml(DEPLOY / "monitoring-compose.yaml")
    services = compose["services"]
    assert set(services) == {"prometheus", "grafana"}
    mounts = {
        service: {
            volume.split(":")[1]: volume.split(":")[0] for volume in services[service]["volumes"]
        }
        for service in services
    }
    # Every host path mounted exists, and Grafana finds the dashboards where the provider looks.
    for service_mounts in mounts.values():
        for source in service_mounts.values():
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    assert mounts["grafana"][dashboards_path] == "./grafana/dashboards"
    assert mounts["grafana"]["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert mounts["prometheus"]["/etc/prometheus"] == "./prometheus"
    # The scrape key never lands in a file under deploy/.
    assert "KEEL_API_KEY" in json.dumps(services["prometheus"])


def test_prometheus_scrapes_keel_and_loads_the_rules() -> None:
    config = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    [job] = config["scrape_configs"]
    assert job["job_name"] == "keel"
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    [discovery] = job["file_sd_configs"]
    assert discovery["files"] == ["/etc/prometheus/targets/*.yml"]
    targets = _yaml(DEPLOY / "prometheus" / "targets" / "keel.yml")
    assert all(re.fullmatch(r"[\w.-]+:\d+", t) for group in targets for t in group["targets"])
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert RULE_FILES


def test_rules_follow_the_prometheus_rule_format() -> None:
    # What promtool checks for the structure; the expressions themselves it parses below.
    for path in RULE_FILES:
        document = _yaml(path)
        assert set(document) == {"groups"}
        names = [group["name"] for group in document["groups"]]
        assert len(names) == len(set(names))
        for group in document["groups"]:
            assert set(group) <= {"name", "interval", "rules", "limit"}
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), rule
                assert isinstance(rule["expr"], str) and rule["expr"].strip()
                if "record" in rule:
                    assert set(rule) <= {"record", "expr", "labels"}
                    assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["record"])
                    continue
                assert set(rule) <= {
                    "alert",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                }
                assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", rule["alert"])
                assert "for" not in rule or DURATION.match(rule["for"])
                assert rule["labels"]["severity"] in {"critical", "warning", "info"}
                assert {"summary", "description"} <= set(rule["annotations"])
    assert {rule["alert"] for rule in _rules() if "alert" in rule} >= {
        "KeelDown",
        "KeelRecordsDropped",
        "KeelCircuitOpen",
        "KeelHighErrorRate",
    }


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_the_config(tmp_path: Path) -> None:
    for path in RULE_FILES:
        checked = subprocess.run(
            ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    # The config names container paths: point them at the repository's files to check it.
    token = tmp_path / "keel-token"
    token.write_text("", encoding="utf-8")
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    config = config.replace("/etc/prometheus/", f"{DEPLOY / 'prometheus'}/").replace(
        "/prometheus/keel-token", str(token)
    )
    rewritten = tmp_path / "prometheus.yml"
    rewritten.write_text(config, encoding="utf-8")
    checked = subprocess.run(
        ["promtool", "check", "config", str(rewritten)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_every_metric_queried_is_exported(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_openai_url: str
) -> None:
    deployment = {
        "id": "solo",
        "provider": "openai",
        "model": "up-solo",
        "api_base": fake_openai_url,
        "api_key": "sk-test",
    }
    settings = remote_settings(tmp_path, [deployment], routing={"retry": {"max_attempts": 1}})
    async with running_app(settings) as (_app, client):
        body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        assert (await client.post("/v1/chat/completions", json=streamed)).status_code == 200
        fake_openai.faults["up-solo"] = ErrorReply(500, "boom", type="server_error")
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 502
        scrape = (await client.get("/metrics")).text

    exported: set[str] = set()
    for family in text_string_to_metric_families(scrape):
        exported.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        exported.update(sample.name for sample in family.samples)
    queries = [query for path in DASHBOARDS for query in _dashboard_queries(_dashboard(path))]
    queries += [rule["expr"] for rule in _rules()]
    referenced = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert len(referenced) >= 25
    missing = sorted(referenced - exported)
    assert not missing, f"queried but not exported: {', '.join(missing)}"
    # The recording rules' outputs that dashboards use must be defined.
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    used = {name for query in queries for name in re.findall(r"keel:[a-z0-9_:]+", query)}
    assert used <= recorded
