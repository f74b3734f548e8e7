"""deploy/: the Grafana dashboard imports cleanly and queries only metrics that exist, and
Prometheus scrapes what docker-compose.yml runs.

"Exists" is read from the real thing: the worker's registry (what each worker and the
poller serve) and the API's real ``/metrics``, scraped with the operator key. Every series
name in every panel's PromQL must be one of those (counters as ``_total``, histograms as
``_bucket``/``_count``/``_sum``), every label it matches or groups on one they carry, and
every ``job`` one that deploy/prometheus/prometheus.yml scrapes, serving that metric.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from imagegen.worker import metrics
from tests import promql
from tests.conftest import API_KEY, ROOT, Stack
from tests.test_compose import SERVICES, argv, environment

DEPLOY = ROOT / "deploy"
DASHBOARD: dict[str, Any] = json.loads((DEPLOY / "grafana/dashboards/imagegen.json").read_text())
PROMETHEUS: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
DATASOURCES: dict[str, Any] = yaml.safe_load(
    (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
)
PROVIDERS: dict[str, Any] = yaml.safe_load(
    (DEPLOY / "grafana/provisioning/dashboards/imagegen.yml").read_text()
)
#: Which role's metrics each scrape job gets (the poller serves the worker's registry).
ROLE_OF_JOB = {"imagegen-api": "api", "imagegen-worker": "worker", "imagegen-poller": "worker"}
#: What Prometheus adds to every target: series it writes itself, labels on every series.
SYNTHETIC = ("up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added")
TARGET_LABELS = {"job", "instance"}
#: Panel types Grafana ships with (a dashboard needing a plugin would not import cleanly).
CORE_PANELS = {"timeseries", "stat", "gauge", "bargauge", "piechart", "table", "text", "row"}
CORE_PANELS |= {"barchart", "heatmap", "state-timeline", "status-history", "histogram"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum")}

Catalog = dict[str, dict[str, set[str]]]  # scrape job -> series name -> label names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} ({panel['title']}) {target['refId']}", target["expr"]


def _series(families: Iterable[Any], labels_of: dict[str, tuple[str, ...]]) -> dict[str, set[str]]:
    """Series names as Prometheus stores them, each with its label names."""
    found: dict[str, set[str]] = {}
    for family in families:
        labels = set(labels_of.get(family.name, ())) | TARGET_LABELS
        labels |= {name for sample in family.samples for name in sample.labels}
        for suffix in SUFFIXES.get(family.type, ("",)):
            found[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return found


def _labelnames() -> dict[str, tuple[str, ...]]:
    """Label names of every metric defined in worker.metrics: a labelled counter that has
    counted nothing yet has no sample to read them from."""
    wrappers = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    return {w._name: tuple(w._labelnames) for w in wrappers}


def _synthetic(catalog: Catalog) -> Catalog:
    for job in [*catalog, "prometheus"]:
        catalog.setdefault(job, {}).update({name: set(TARGET_LABELS) for name in SYNTHETIC})
    return catalog


def scrape_api(stack: Stack) -> str:
    """The real API's /metrics (Postgres and Redis behind it), as Prometheus would scrape it."""
    from imagegen.worker.web import create_app

    app = create_app(stack.settings(imagegen_api_key=API_KEY), celery=stack.app())
    with TestClient(app) as client:
        client.get("/jobs", headers=AUTH)
        answer = client.get("/metrics", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.text


@pytest.fixture
def api_metrics(stack: Stack) -> str:
    return scrape_api(stack)


@pytest.fixture
def catalog(api_metrics: str) -> Catalog:
    labels = _labelnames()
    roles = {
        "worker": _series(metrics.role_registry(metrics.WORKER).collect(), labels),
        "api": _series(text_string_to_metric_families(api_metrics), labels),
    }
    return _synthetic({job: dict(roles[role]) for job, role in ROLE_OF_JOB.items()})


def problems(dashboard: dict[str, Any], catalog: Catalog) -> list[str]:
    """Every series, label or job the dashboard's queries name that is not scraped."""
    found = []
    for where, expr in exprs(dashboard):
        query = promql.parse(expr)
        labels: set[str] = set()
        for selector in query.selectors:
            jobs = _jobs_matched(selector, catalog)
            serving = {job for job in jobs if selector.name in catalog[job]}
            if not jobs:
                found.append(f"{where}: no scrape job matches {selector.matchers}")
            elif not serving:
                found.append(f"{where}: no {selector.name} in what {sorted(jobs)} serve")
            have = set().union(*(catalog[job].get(selector.name, set()) for job in serving))
            for label, _, _ in selector.matchers:
                if serving and label not in have:
                    found.append(f"{where}: {selector.name} has no label {label!r}")
            labels |= have
        for label in query.grouping - labels:
            found.append(f"{where}: groups by {label!r}, which none of its series has")
    return found


def _jobs_matched(selector: promql.Selector, catalog: Catalog) -> set[str]:
    jobs = set(catalog)
    for label, op, value in selector.matchers:
        if label == "job":
            hit = {j for j in jobs if (j == value if op[-1] == "=" else re.fullmatch(value, j))}
            jobs = hit if op in ("=", "=~") else jobs - hit
    return jobs


def test_every_metric_the_dashboard_queries_exists(catalog: Catalog) -> None:
    assert not problems(DASHBOARD, catalog)
    queried = {s.name for _, e in exprs(DASHBOARD) for s in promql.parse(e).selectors}
    wanted = {"imagegen_jobs_in_flight", "imagegen_queue_depth", "imagegen_refusals_total"}
    wanted |= {"imagegen_fal_cooldowns_total", "imagegen_spend_usd_total"}
    assert wanted <= queried, f"the dashboard lacks {wanted - queried}"


def test_a_misspelt_metric_label_or_job_is_caught(catalog: Catalog) -> None:
    for old, new, complaint in (
        ("imagegen_spend_usd_total", "imagegen_spend_total", "no imagegen_spend_total"),
        ("imagegen_fal_generation_seconds_bucket", "imagegen_fal_generation_seconds", "no "),
        ("sum by (category)", "sum by (kind)", "groups by 'kind'"),
        ('job="imagegen-poller"', 'job="poller"', "no scrape job"),
        ("imagegen_queue_depth", 'imagegen_queue_depth{job="imagegen-worker"}', "no imagegen_q"),
    ):
        broken = copy.deepcopy(DASHBOARD)
        for panel in panels(broken):
            for target in panel["targets"]:
                target["expr"] = target["expr"].replace(old, new)
        assert broken != DASHBOARD, old
        found = problems(broken, catalog)
        assert any(complaint in line for line in found), (old, found)


def test_the_job_table_panel_shows_every_open_state() -> None:
    """``imagegen_jobs{status=~...}`` names real states, all the open ones: a new state
    (``waiting`` came with the fair share) must not be missing from the dashboard."""
    from imagegen.models import OPEN_STATUSES, JobStatus

    asked: set[str] = set()
    for _, expr in exprs(DASHBOARD):
        for selector in promql.parse(expr).selectors:
            if selector.name == "imagegen_jobs":
                asked |= {
                    v
                    for label, _, value in selector.matchers
                    if label == "status"
                    for v in value.split("|")
                }
    assert asked <= {s.value for s in JobStatus}, asked - {s.value for s in JobStatus}
    assert {s.value for s in OPEN_STATUSES} <= asked, "the dashboard misses open states"


def _gridpos_cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
    pos = panel["gridPos"]
    assert all(isinstance(pos[k], int) for k in "xywh"), panel["title"]
    assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
    return {
        (x, y)
        for x in range(pos["x"], pos["x"] + pos["w"])
        for y in range(pos["y"], pos["y"] + pos["h"])
    }


def test_the_dashboard_is_grafana_dashboard_json() -> None:
    assert DASHBOARD["id"] is None, "an exported dashboard carries no database id"
    assert re.fullmatch(r"[\w-]{1,40}", DASHBOARD["uid"]) and DASHBOARD["title"]
    assert isinstance(DASHBOARD["schemaVersion"], int) and DASHBOARD["schemaVersion"] >= 36
    ids, cells = [], set[tuple[int, int]]()
    for panel in panels(DASHBOARD):
        ids.append(panel["id"])
        assert isinstance(panel["id"], int) and panel["title"], panel
        assert panel["type"] in CORE_PANELS, f"{panel['title']}: needs the {panel['type']} plugin"
        mine = _gridpos_cells(panel)
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_query_uses_the_provisioned_prometheus() -> None:
    (source,) = DATASOURCES["datasources"]
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    chosen = variables["datasource"]
    assert chosen["type"] == "datasource" and chosen["query"] == source["type"] == "prometheus"
    assert chosen["current"]["value"] == source["uid"], "the default is not the provisioned one"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(DASHBOARD):
        assert panel["datasource"] == expected, panel["title"]
        assert all(t["datasource"] == expected for t in panel["targets"]), panel["title"]


def _mounts(service: str) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts."""
    return {v.split(":")[1]: v.split(":")[0] for v in SERVICES[service]["volumes"]}


def _jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}


def test_prometheus_scrapes_the_api_every_worker_and_the_poller() -> None:
    jobs = _jobs()
    assert set(jobs) == {*ROLE_OF_JOB, "prometheus"}
    api = jobs["imagegen-api"]
    port = argv("api")[argv("api").index("--port") + 1]
    assert api["static_configs"] == [{"targets": [f"api:{port}"]}]
    assert api["metrics_path"] == "/metrics"
    for job, service, variable in (
        ("imagegen-worker", "worker", "IMAGEGEN_WORKER_METRICS_PORT"),
        ("imagegen-poller", "poller", "IMAGEGEN_POLLER_METRICS_PORT"),
    ):
        # every replica of `--scale worker=N`: one DNS name, an A record each
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["type"] == "A", job
        assert str(sd["port"]) == environment(service)[variable], job
        assert [str(p) for p in SERVICES[service]["expose"]] == [str(sd["port"])], job


def test_prometheus_has_the_operator_key_as_a_secret_file() -> None:
    from tests.test_compose import COMPOSE

    auth = _jobs()["imagegen-api"]["authorization"]
    assert auth["type"] == "Bearer" and "credentials" not in auth
    secret = Path(auth["credentials_file"])
    assert secret.parent == Path("/run/secrets")
    granted = [s if isinstance(s, str) else s["source"] for s in SERVICES["prometheus"]["secrets"]]
    assert secret.name in granted
    assert COMPOSE["secrets"][secret.name] == {"environment": "IMAGEGEN_API_KEY"}
    assert environment("api")["IMAGEGEN_API_KEY"].startswith("${IMAGEGEN_API_KEY")


def test_compose_mounts_the_config_and_provisioning() -> None:
    config = next(a.split("=", 1)[1] for a in argv("prometheus") if a.startswith("--config.file="))
    assert _mounts("prometheus")[config] == "./deploy/prometheus/prometheus.yml"
    grafana = _mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    (provider,) = PROVIDERS["providers"]
    assert grafana[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    (source,) = DATASOURCES["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert any(str(p).endswith(":9090") for p in SERVICES["prometheus"]["ports"])
    assert environment("grafana")["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    ), "no default admin password"
