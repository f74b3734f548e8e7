"""deploy/ against Prometheus itself, where it is installed (Debian's `prometheus` package
has both binaries): promtool checks the config and every dashboard query; a real Prometheus
scrapes a real API (with the operator key from a file), worker and poller and answers every
query. And the 429 cool-down metrics, counted by a real worker and served by the API."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from imagegen.worker.fal.limits import FalLimiter
from tests import promql
from tests.conftest import API_KEY, Stack, unique
from tests.test_grafana import DASHBOARD, DEPLOY, PROMETHEUS, exprs, scrape_api

PROMTOOL, PROMETHEUS_BIN = shutil.which("promtool"), shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool (apt prometheus)")
#: What Grafana puts in for its variables before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def as_sent(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def value(text: str, name: str) -> float:
    named = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    assert named, f"no {name} in\n{text}"
    return float(named[0].value)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_accepts_the_config(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "imagegen_api_key").write_text("k\n")
    text = (DEPLOY / "prometheus/prometheus.yml").read_text()
    config = tmp_path / "prometheus.yml"  # the secret where this machine has it
    config.write_text(text.replace("/run/secrets/", f"{secrets}/"))
    checked = _promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _rules(tmp_path: Path, queries: list[str]) -> Path:
    rules = [{"record": f"dashboard:query{n}", "expr": q} for n, q in enumerate(queries)]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return path


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    queries = [as_sent(expr) for _, expr in exprs(DASHBOARD)]
    checked = _promtool("check", "rules", str(_rules(tmp_path, queries)))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = _promtool("check", "rules", str(_rules(tmp_path, ["sum by (le (x)"])))
    assert broken.returncode != 0, "promtool took a broken query"


def test_the_api_serves_what_is_left_of_a_429_cool_down(stack: Stack) -> None:
    assert value(scrape_api(stack), "imagegen_fal_cooldown_seconds") == 0
    FalLimiter.for_url(stack.redis_url, limit=None, lease_s=60).cool_down(30)
    assert 28 < value(scrape_api(stack), "imagegen_fal_cooldown_seconds") <= 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _local_config(tmp_path: Path, api: str, ports: dict[str, int], own: int) -> Path:
    """deploy/'s config with the compose names replaced by this machine's processes."""
    config: dict[str, Any] = yaml.safe_load(yaml.safe_dump(PROMETHEUS))
    config["global"]["scrape_interval"] = "1s"
    key = tmp_path / "imagegen_api_key"
    key.write_text(API_KEY + "\n")  # as a compose secret file may have it: with a newline
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name == "imagegen-api":
            job["authorization"]["credentials_file"] = str(key)
            job["static_configs"] = [{"targets": [api.removeprefix("http://")]}]
        elif job.pop("dns_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[name]}"]}]
        else:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{own}"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[int, Any]]:
    """A real Prometheus on a free port; the caller writes its config (a callable)."""
    if PROMETHEUS_BIN is None:
        pytest.skip("no prometheus binary (apt prometheus)")
    port, procs = _free_port(), []

    def start(config: Path) -> str:
        args = [f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
        args.append(f"--web.listen-address=127.0.0.1:{port}")
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(subprocess.Popen([str(PROMETHEUS_BIN), *args], stdout=log, stderr=log))
        return f"http://127.0.0.1:{port}"

    yield port, start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def _wait_for(base: str, expr: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if result := _query(base, expr):
                return result
        except (httpx.HTTPError, ValueError):
            pass  # not listening yet
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never had {expr}; targets: {_query(base, 'up')}")


@pytest.mark.slow
def test_prometheus_scrapes_everything_the_dashboard_asks(
    stack: Stack, prometheus: tuple[int, Any], tmp_path: Path
) -> None:
    ports = {"imagegen-worker": _free_port(), "imagegen-poller": _free_port()}
    stack.start_worker(
        extra_env={
            "IMAGEGEN_WORKER_METRICS_PORT": str(ports["imagegen-worker"]),
            "IMAGEGEN_POLLER_METRICS_PORT": str(ports["imagegen-poller"]),
        }
    )
    api = stack.start_api()
    job_id = stack.enqueue(unique("[[fal:429:1,ok]] a wren"))
    listed = httpx.get(f"{api}/jobs", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert listed.status_code == 200, "the API counts its requests in the first scrape"
    assert stack.wait_terminal(job_id)["status"] == "succeeded"
    own, start = prometheus
    base = start(_local_config(tmp_path, api, ports, own))
    # the API's target is up only if the key from credentials_file was taken (else a 401)
    _wait_for(base, 'count(up{job=~"imagegen-.*"} == 1) == 3')
    (cooldowns,) = _wait_for(base, 'imagegen_fal_cooldowns_total{job="imagegen-worker"}')
    assert cooldowns["value"][1] == "1", "the worker did not count its 429"
    assert _query(base, 'imagegen_jobs_finished_total{outcome="succeeded"}')
    for _, expr in exprs(DASHBOARD):
        _query(base, as_sent(expr))  # every one is a query Prometheus answers
    # and its series are there, but those with labels that counted nothing yet
    missing = {
        selector.name
        for _, expr in exprs(DASHBOARD)
        for selector in promql.parse(expr).selectors
        if not _query(base, f"count({selector.name})")
    }
    labelled = {f"imagegen_{n}_total" for n in ("refusals", "callbacks", "cooldowns_started")}
    labelled |= {"imagegen_moderation_unavailable_total", "imagegen_jobs_images_stored_total"}
    labelled |= {"imagegen_spend_usd_total", "imagegen_slot_grants_total"}
    assert missing <= labelled, f"never scraped: {missing - labelled}"
