"""Deployment files, checked statically (no Docker engine or cluster runs here): they parse,
carry what they must, and name only settings, endpoints, metrics and columns that exist.
The dashboards' ClickHouse queries run against a migrated embedded store."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import clickhouse_connect
import pytest
import yaml

from streams.metrics import EventLatencies, LagSnapshot, PipelineCollector, PipelineStats
from streams.settings import Settings
from streams.store import apply_migrations

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTING_VARIABLES = {f"ABM_{name.upper()}" for name in Settings.model_fields} | {"CLICKHOUSE_URL"}
DASHBOARDS = {path.stem: json.loads(path.read_text()) for path in (DEPLOY / "grafana" / "dashboards").glob("*.json")}


def metric_names() -> set[str]:
    """Every metric family and sample name the worker's collector exposes."""
    lag = LagSnapshot([SimpleNamespace(topic="t", partition=0, lag=1)], 1.0)
    stats = PipelineStats(valid_by_type={"x": 1}, invalid_by_reason={"y": 1}, transitions_by_stages={"a->b": 1})
    sink = SimpleNamespace(stats=SimpleNamespace(rows_written=0, inserts=0, failures=0), failing=False)
    checkpoint = SimpleNamespace(commits=0, pending_events=0, last_commit_at=None)
    families = list(PipelineCollector(stats, sink, checkpoint, lag, EventLatencies()).collect())
    return {f.name for f in families} | {s.name for f in families for s in f.samples}


def referenced_metrics(text: str) -> set[str]:
    return set(re.findall(r"\babm_[a-z0-9_]+", text))


def test_compose_stack_has_every_service_and_valid_worker_settings():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "clickhouse", "worker", "prometheus", "grafana"}
    worker = services["worker"]
    assert set(worker["environment"]) <= SETTING_VARIABLES
    assert worker["deploy"]["replicas"] >= 2
    assert "/readyz" in " ".join(worker["healthcheck"]["test"])
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source


def test_kubernetes_manifests():
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "worker.yaml").read_text()))
    by_kind = {}
    for document in documents:
        assert {"apiVersion", "kind", "metadata"} <= set(document) and document["metadata"]["name"]
        by_kind.setdefault(document["kind"], []).append(document)
    [deployment] = by_kind["Deployment"]
    [budget] = by_kind["PodDisruptionBudget"]
    [config] = by_kind["ConfigMap"]
    [secret] = by_kind["Secret"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    [container] = pod["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert set(config["data"]) | set(secret["stringData"]) <= SETTING_VARIABLES
    assert int(config["data"]["ABM_TOPIC_REPLICATION"]) >= 3
    assert {s["spec"].get("type") for s in by_kind["Service"]} >= {"ExternalName"}


def test_prometheus_config_loads_the_alert_rules():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert [job["job_name"] for job in config["scrape_configs"]] == ["abm-worker"]


def test_alerts_and_dashboards_use_only_metrics_the_worker_exposes():
    exposed = metric_names()
    texts = [(DEPLOY / "prometheus" / "alerts.yml").read_text(), *(json.dumps(d) for d in DASHBOARDS.values())]
    used = set().union(*(referenced_metrics(text) for text in texts))
    assert used and used <= exposed, used - exposed


def test_dashboards_are_grafana_documents_with_datasources():
    assert set(DASHBOARDS) == {"operations", "abm-funnel"}
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources.yml").read_text())
    uids = {source["uid"] for source in provisioned["datasources"]}
    for dashboard in DASHBOARDS.values():
        assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] in uids and panel["targets"], panel["title"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('dashboards')}")
    apply_migrations(client)
    return client


def test_dashboard_queries_run_on_the_schema(store):
    queries = [t["rawSql"] for d in DASHBOARDS.values() for p in d["panels"] for t in p["targets"] if "rawSql" in t]
    assert len(queries) == 8
    for query in queries:
        # Grafana's time macro, as the plugin expands it
        runnable = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= toDateTime64(0, 3)", query)
        store.query(runnable)  # raises on an unknown table, column or function
