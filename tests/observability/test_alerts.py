"""The alert rules and dashboards in deploy/k8s/components/monitoring read only metrics
the code exports, with labels those metrics have; the exported metrics follow Prometheus
conventions (units in names, counters end in _total, no per-user or per-resource
labels); the monitoring component builds with kustomize."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from aivera.training.v1 import jobs_pb2
from services.common import metrics
from services.common.access import method_table
from services.training import queue_metrics, worker_http

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "k8s" / "components" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))
# Every module that defines Prometheus metrics of ours.
METRIC_MODULES = (metrics, worker_http)
# Labels Prometheus adds to every scraped series (target labels), not the code.
TARGET_LABELS = {"pod", "namespace", "job", "instance", "container", "service_name"}
UNBOUNDED = {"user", "user_id", "chat_id", "job_id", "document_id", "file_id", "model_id"}
UNBOUNDED |= {"request_id", "trace_id", "id", "worker_id", "kb_id", "clone_id", "dataset_id"}
UNITS = ("_seconds", "_bytes", "_ratio", "_total", "_timestamp_seconds")


@dataclass(frozen=True)
class Exported:
    name: str  # a series name as scraped (with _total, _bucket...)
    labels: frozenset[str]


def _ours() -> Iterator[MetricWrapperBase]:
    for module in METRIC_MODULES:
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                yield value


def exported() -> dict[str, Exported]:
    """Series names as Prometheus stores them, with their label names."""
    out: dict[str, Exported] = {}
    for metric in _ours():
        name, kind = metric._name, metric._type
        labels = frozenset(metric._labelnames)
        if kind == "counter":
            names = {f"{name}_total": labels}
        elif kind == "histogram":
            names = {
                f"{name}_bucket": labels | {"le"},
                f"{name}_sum": labels,
                f"{name}_count": labels,
            }
        else:
            names = {name: labels}
        out.update({n: Exported(n, ls) for n, ls in names.items()})
    return out


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}


def selectors(expr: str) -> list[Selector]:
    found: list[Selector] = []

    def visit(node: Any) -> None:
        # walk() reaches a range's vector selector too (the child of a MatrixSelector).
        if isinstance(node, promql_parser.VectorSelector):
            matchers = tuple(
                (m.name, OPS[str(m.op)], m.value)
                for m in node.matchers.matchers
                if m.name != "__name__"
            )
            found.append(Selector(node.name or "", matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert doc["kind"] == "PrometheusRule"
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
    return out


GRPC_CODES = {code.name for code in grpc.StatusCode}
JOB_STATUSES = set(queue_metrics._STATUSES.values())
# Values a label may take, where the code fixes them.
LABEL_VALUES = {
    "grpc_code": GRPC_CODES,
    "status": JOB_STATUSES,
    "direction": {"input", "output"},
    "grpc_service": {info.service for info in method_table().values()},
    "grpc_method": {info.name for info in method_table().values()},
}


def check(where: str, expr: str) -> list[str]:
    """What in `expr` does not match the exported metrics (empty: all of it does)."""
    known = exported()
    problems: list[str] = []
    found = selectors(expr)
    if not found:
        problems.append(f"{where}: reads no metric")
    for sel in found:
        metric = known.get(sel.name)
        if metric is None:
            problems.append(f"{where}: {sel.name!r} is not exported by the code")
            continue
        for label, op, value in sel.matchers:
            if label not in metric.labels:
                problems.append(f"{where}: {sel.name} has no label {label!r}")
                continue
            allowed = LABEL_VALUES.get(label)
            if allowed is None or "$" in value:  # free values, or a dashboard variable
                continue
            values = value.split("|") if "~" in op else [value]
            unknown = [v for v in values if v not in allowed]
            if unknown:
                problems.append(f"{where}: {label} values {unknown} never occur")
    return problems


def test_every_alert_reads_only_exported_metrics() -> None:
    problems = [p for rule in rules() for p in check(rule["alert"], rule["expr"])]
    assert problems == []


def test_every_dashboard_panel_reads_only_exported_metrics() -> None:
    assert len(DASHBOARDS) >= 3
    problems = [p for where, expr in dashboard_exprs() for p in check(where, expr)]
    assert problems == []


def test_the_check_finds_a_misspelled_metric_or_label() -> None:
    # The checks above would pass on anything if these did not fail.
    assert check("x", "rate(grpc_server_handled[5m])")
    assert check("x", 'rate(grpc_server_handled_total{user_id="u"}[5m])')
    assert check("x", 'rate(grpc_server_handled_total{grpc_code="Internal"}[5m])')
    assert check("x", 'aivera_training_jobs{status="waiting"}')
    assert (
        check("x", 'rate(grpc_server_handled_total{grpc_code=~"INTERNAL|UNAVAILABLE"}[1m])') == []
    )


def test_alerts_cover_what_operators_need() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    read = {name: {s.name for s in selectors(r["expr"])} for name, r in by_name.items()}
    wanted = {
        "error ratio": "grpc_server_handled_total",
        "p99 latency": "grpc_server_handling_seconds_bucket",
        "queue age": "aivera_training_queue_oldest_age_seconds",
        "worker heartbeat": "aivera_training_worker_last_ok_timestamp_seconds",
        "dependency down": "aivera_service_serving",
    }
    for what, metric in wanted.items():
        assert any(metric in names for names in read.values()), what
    for rule in by_name.values():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["for"], rule["alert"]


def _streaming_excluded(expr: str) -> set[str]:
    (sel,) = [s for s in selectors(expr) if s.name == "grpc_server_handling_seconds_bucket"]
    (value,) = [v for label, op, v in sel.matchers if label == "grpc_method" and op == "!~"]
    return set(value.split("|"))


def test_latency_alert_leaves_out_exactly_the_streaming_rpcs() -> None:
    table = method_table().values()
    streaming = {i.name for i in table if i.server_streaming or i.client_streaming}
    unary = {i.name for i in table if not (i.server_streaming or i.client_streaming)}
    (rule,) = [r for r in rules() if r["alert"] == "AiveraRpcLatencyP99High"]
    excluded = _streaming_excluded(rule["expr"])
    assert excluded == streaming, "update the list in prometheusrule.yaml"
    assert not excluded & unary


def test_exported_metrics_follow_prometheus_conventions() -> None:
    seen = list(_ours())
    assert len(seen) >= 12
    for metric in seen:
        name, kind, labels = metric._name, metric._type, set(metric._labelnames)
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert name.startswith(("aivera_", "grpc_server_")), name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), f"{name}: a histogram needs its unit"
        if kind == "gauge" and not name.endswith(UNITS):
            # Unitless gauges count things or are 0/1 states.
            assert name.endswith(("_busy", "_serving", "_jobs")), f"{name}: unit?"
        assert not name.endswith("_total") or kind == "counter", name
        assert not labels & UNBOUNDED, f"{name}: unbounded labels {labels & UNBOUNDED}"
        assert not labels & TARGET_LABELS, f"{name}: {labels & TARGET_LABELS} is a target label"


def test_job_status_label_values_follow_the_contract() -> None:
    names = {n.removeprefix("JOB_STATUS_").lower() for n in jobs_pb2.JobStatus.keys()}  # noqa: SIM118
    assert names - {"unspecified"} == JOB_STATUSES


def test_monitoring_component_builds(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    import os

    target = tmp_path / "prod-monitoring"
    target.mkdir()
    (target / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # As when an overlay lists the component: its namespace applies.
                "namespace": "aivera",
                "resources": [os.path.relpath(ROOT / "deploy/k8s/overlays/prod", target)],
                "components": [os.path.relpath(MONITORING, target)],
            }
        )
    )
    proc = subprocess.run(
        [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("PrometheusRule", "aivera") in kinds and ("PodMonitor", "aivera") in kinds
    (boards,) = [d for d in docs if d["metadata"]["name"] == "aivera-dashboards"]
    assert boards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {f"{p.name}" for p in DASHBOARDS} == set(boards["data"])
    for doc in docs:
        assert doc["metadata"].get("namespace") == "aivera" or doc["kind"] == "Namespace"
