"""The otel/deploy files stay valid: they parse, agree with each other, and name only metrics
the catalogue declares. With `promtool` on the machine (Debian's prometheus package), the
Prometheus config and rules are also checked by it; the structural checks run regardless."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import yaml

from pgsched.otel import catalogue
from tests.conftest import ROOT
from tests.otel.conftest import promtool

DEPLOY = ROOT / "otel" / "deploy"
# Series pgsched exposes that are not its own catalogue's: Litestar's request metrics.
LITESTAR = {
    "pgsched_api_requests_total",
    "pgsched_api_request_duration_seconds",
    "pgsched_api_requests_in_progress",
    "pgsched_api_requests_error_total",
}
REQUIRED_ALERTS = {
    "PgschedSchedulerDown",
    "PgschedHighFailureRate",
    "PgschedLowSuccessRate",
    "PgschedQueueDepthHigh",
    "PgschedWorkersDown",
    "PgschedSlowExecution",
    "PgschedNoActiveSchedules",
    "PgschedPartitionsRunningOut",
    "PgschedDefaultPartitionRows",
    "PgschedDeadRunsGrowing",
    "PgschedSchedulesUnhealthy",
    "PgschedCircuitBreakerOpen",
}
# Rules with a promtool unit test in prometheus/alerts.test.yml (ADR 0032).
UNIT_TESTED_ALERTS = {"PgschedSchedulesUnhealthy", "PgschedCircuitBreakerOpen"}


def load(rel: str) -> Any:
    return yaml.safe_load((DEPLOY / rel).read_text())


def metric_names(expr: str) -> set[str]:
    """The pgsched series a PromQL expression reads (string literals removed first)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\bpgsched_[a-zA-Z0-9_]+", without_strings))


def balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def known(name: str) -> bool:
    return name in catalogue.prometheus_names() or name in LITESTAR


def port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_the_collector_takes_otlp_and_feeds_tempo_and_prometheus() -> None:
    c = load("collector.yaml")
    assert port(c["receivers"]["otlp"]["protocols"]["http"]["endpoint"]) == 4318
    pipelines = c["service"]["pipelines"]
    for kind in ("receivers", "processors", "exporters"):
        for pipeline in pipelines.values():
            for name in pipeline.get(kind, []):
                assert name in c[kind], f"{name} used in a pipeline but not defined"
    (traces_to,) = pipelines["traces"]["exporters"]
    tempo_endpoint = c["exporters"][traces_to]["endpoint"]
    assert traces_to.startswith("otlp") and tempo_endpoint.startswith("tempo:")
    tempo = load("tempo.yaml")
    grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert port(grpc) == port(tempo_endpoint)
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    metrics_port = port(c["exporters"]["prometheus"]["endpoint"])
    prom = load("prometheus/prometheus.yml")
    targets = [
        t for job in prom["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert targets == [f"otel-collector:{metrics_port}"]
    for rule_file in prom["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()


def test_alert_rules_are_well_formed_and_use_catalogue_metrics() -> None:
    rules = [r for g in load("prometheus/alerts.yml")["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) and set(names) >= REQUIRED_ALERTS
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"Pgsched[A-Z][A-Za-z]+", rule["alert"])
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"].strip()
        expr = rule["expr"]
        assert balanced(expr), rule["alert"]
        used = metric_names(expr)
        assert used, f"{rule['alert']} reads no pgsched metric"
        unknown = {n for n in used if not known(n)}
        assert not unknown, f"{rule['alert']} names metrics not in the catalogue: {unknown}"
    partitions = next(r for r in rules if r["alert"] == "PgschedPartitionsRunningOut")
    assert "pgsched_partitions_months_ahead" in partitions["expr"] and "< 2" in partitions["expr"]
    # Debian's prometheus package brings promtool: then it checks the PromQL too.
    if checker := promtool():
        subprocess.run(
            [checker, "check", "rules", str(DEPLOY / "prometheus/alerts.yml")],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                checker,
                "check",
                "config",
                "--syntax-only",
                str(DEPLOY / "prometheus/prometheus.yml"),
            ],
            check=True,
            capture_output=True,
        )


def test_schedule_health_alerts_fire_on_their_metrics_after_their_for() -> None:
    """prometheus/alerts.test.yml: each rule there is evaluated on made-up series, on both
    sides of its `for`, and not at all where its metric stays 0 (`promtool test rules`)."""
    spec = load("prometheus/alerts.test.yml")
    assert spec["rule_files"] == ["alerts.yml"]
    tested = {case["alertname"] for test in spec["tests"] for case in test["alert_rule_test"]}
    assert tested == UNIT_TESTED_ALERTS
    firing = {
        case["alertname"]
        for test in spec["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert firing == UNIT_TESTED_ALERTS  # each is seen firing, not only silent
    if checker := promtool():
        subprocess.run(
            [checker, "test", "rules", str(DEPLOY / "prometheus/alerts.test.yml")],
            check=True,
            capture_output=True,
        )


def _dashboards() -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text()) for p in sorted((DEPLOY / "grafana/dashboards").glob("*.json"))
    ]


def test_dashboards_use_catalogue_metrics_and_provisioned_datasources() -> None:
    sources = load("grafana/provisioning/datasources/datasources.yaml")["datasources"]
    uids = {s["uid"] for s in sources}
    assert {"prometheus", "tempo"} <= uids
    dashboards = _dashboards()
    assert {d["uid"] for d in dashboards} == {"pgsched-overview", "pgsched-jobs"}
    for d in dashboards:
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), d["uid"]
        for p in d["panels"]:
            assert p["title"] and p["type"] and set(p["gridPos"]) == {"x", "y", "w", "h"}
            assert p["datasource"]["uid"] in uids
            assert p["targets"], p["title"]
            for target in p["targets"]:
                expr = target["expr"]
                assert balanced(expr), p["title"]
                used = metric_names(expr)
                assert used, f"{p['title']} reads no pgsched metric"
                unknown = {n for n in used if not known(n)}
                assert not unknown, f"{d['uid']} / {p['title']}: not in the catalogue: {unknown}"
    provider = load("grafana/provisioning/dashboards/dashboards.yaml")["providers"][0]
    compose = load("compose.yaml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_every_catalogue_metric_is_on_a_dashboard_or_in_a_rule() -> None:
    used: set[str] = set()
    for d in _dashboards():
        for p in d["panels"]:
            for t in p["targets"]:
                used |= metric_names(t["expr"])
    for g in load("prometheus/alerts.yml")["groups"]:
        for r in g["rules"]:
            used |= metric_names(r["expr"])
    for m in catalogue.METRICS:
        series = {m.prometheus} | {f"{m.prometheus}_{s}" for s in ("bucket", "sum", "count")}
        assert used & series, f"{m.prometheus} is on no dashboard and in no rule"


def test_the_compose_file_wires_the_stack_together() -> None:
    compose = load("compose.yaml")
    services = compose["services"]
    assert {"pgsched", "otel-collector", "tempo", "prometheus", "grafana"} <= set(services)
    env = services["pgsched"]["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts a missing {source}"


def test_the_stack_runs_pgsched_from_an_image_of_the_wheel() -> None:
    """compose builds the repository's Dockerfile (no install from a mount of the checkout), and
    the Dockerfile's build stage copies every folder the package's links point at."""
    pgsched = load("compose.yaml")["services"]["pgsched"]
    assert "volumes" not in pgsched
    context = (DEPLOY / pgsched["build"]["context"]).resolve()
    dockerfile = (context / pgsched["build"]["dockerfile"]).read_text()
    assert context == ROOT
    copied = {
        line.split()[1]
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from" not in line
    }
    links = {p.readlink().name for p in (ROOT / "pgsched").iterdir() if p.is_symlink()}
    assert links == {"app", "workers", "otel", "alembic", "sql"}
    assert links | {"pgsched", "pyproject.toml"} <= copied
    assert "pip wheel" in dockerfile
    assert 'ENTRYPOINT ["pgsched"]' in dockerfile
