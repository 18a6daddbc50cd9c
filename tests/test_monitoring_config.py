"""Prometheus and Grafana as docker-compose.yml provisions them (issue 12 item 7): the files are read and checked
against each other, and every metric the dashboard queries is one the API exports.

No Docker engine here: the scrape config and dashboard are validated as data, and the metrics come from the
API's own collector over a real SQLite store (one finished job with a round) and the system Redis.
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from qkan_orch.service.broker import celery_app
from qkan_orch.service.metrics import registry_for
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.database import session_scope, upgrade
from qkan_orch.service.store.keys import create_key
from qkan_orch.service.store.tables import Job, Round, utcnow
from service_env import system_redis_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/qkan.json").read_text())
DATASOURCES = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())


def mounts(service: str) -> dict[str, str]:
    """Container path → host path of a compose service's bind mounts (relative to the repository)."""
    found = {}
    for volume in COMPOSE[service]["volumes"]:
        host, container, *_ = volume.split(":")
        if host.startswith("./"):
            found[container] = host
    return found


def test_prometheus_scrapes_the_api_where_compose_serves_it() -> None:
    config_path = mounts("prometheus")["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load((ROOT / config_path).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = [t for group in job["static_configs"] for t in group["targets"]]
    host, port = target.split(":")
    assert host in COMPOSE and COMPOSE[host]["command"].endswith(f"--port {port}")


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard() -> None:
    bound = mounts("grafana")
    assert (ROOT / bound["/etc/grafana/provisioning"]).is_dir()
    (source,) = DATASOURCES["datasources"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in COMPOSE
    providers = yaml.safe_load((ROOT / bound["/etc/grafana/provisioning"] / "dashboards/qkan.yml").read_text())
    (provider,) = providers["providers"]
    assert bound[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    uids = {t["datasource"]["uid"] for p in DASHBOARD["panels"] for t in p["targets"]}
    assert uids == {source["uid"]} and len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])


def exported_samples(tmp_path: Path) -> set[str]:
    """Sample names of /metrics over a store holding one started job with one finished round."""
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    upgrade(url)
    with session_scope(url) as session:
        key, _ = create_key(session, "metrics")
        session.add(Job(id="j1", owner_id=key.id, kind="inference", backend="ibm:ibm_torino", queue="ibm",
                        request_hash="", state="succeeded", inputs=b"", started_at=utcnow()))
        session.flush()
        session.add(Round(job_id="j1", number=0, seconds=2.5))
        session.commit()
    with system_redis_url() as redis:
        settings = Settings(database_url=url, redis_url=redis)
        text = generate_latest(registry_for(settings, celery_app(settings))).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_metric_the_dashboard_queries_is_exported(tmp_path: Path) -> None:
    samples = exported_samples(tmp_path)
    queried = {name for p in DASHBOARD["panels"] for t in p["targets"] for name in re.findall(r"\bqkan_\w+", t["expr"])}
    assert queried, "the dashboard queries no qkan metric"
    assert queried <= samples, sorted(queried - samples)
    # per backend, as the provider-wait panel filters on it
    assert any(p["title"].startswith("Provider wait") for p in DASHBOARD["panels"])


@pytest.mark.parametrize("panel", DASHBOARD["panels"], ids=lambda p: p["title"])
def test_each_panel_has_a_query_and_a_place(panel: dict) -> None:
    assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
