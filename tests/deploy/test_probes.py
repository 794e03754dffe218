"""Every httpGet probe of a Deployment in deploy/k8s/base names a port the container
declares, and that port and path are served by the process the container runs: the
training worker's HTTP port (`services.training.worker_http`; the real worker process is
probed in tests/training/test_worker_health.py) and Envoy's `probes` listener (from the
generated gateway/envoy.yaml). The services use gRPC probes (grpc.health.v1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.envoy_config import ENVOY_YAML, PROBES_PORT
from gateway.static import HEALTH_PATH, WEB_PORT
from services.common import ports

BASE = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base"
KINDS = ("startupProbe", "readinessProbe", "livenessProbe")
WORKER_PATHS = {"/healthz", "/metrics"}


def deployments() -> list[dict[str, Any]]:
    out = []
    for f in sorted(BASE.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Deployment":
                out.append(doc)
    return out


def http_probes() -> dict[str, set[tuple[str, int]]]:
    """Deployment name → {(path, container port)} of its httpGet probes."""
    found: dict[str, set[tuple[str, int]]] = {}
    for d in deployments():
        for c in d["spec"]["template"]["spec"]["containers"]:
            named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for kind in KINDS:
                get = (c.get(kind) or {}).get("httpGet")
                if get is None:
                    continue
                port = get["port"]
                assert not isinstance(port, str) or port in named, (d["metadata"]["name"], port)
                number = named[port] if isinstance(port, str) else int(port)
                found.setdefault(d["metadata"]["name"], set()).add((get["path"], number))
    return found


def envoy_paths(port: int) -> set[str]:
    config = yaml.safe_load(ENVOY_YAML.read_text())
    paths: set[str] = set()
    for listener in config["static_resources"]["listeners"]:
        if listener["address"]["socket_address"]["port_value"] != port:
            continue
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        for vhost in hcm["route_config"]["virtual_hosts"]:
            paths |= {r["match"]["path"] for r in vhost["routes"] if "path" in r["match"]}
    return paths


def test_every_http_probe_is_served_by_its_process() -> None:
    probes = http_probes()
    assert set(probes) == {"training-worker", "envoy", "web"}, "a new httpGet probe: check it here"
    for path, port in probes["training-worker"]:
        assert port == ports.TRAINING_WORKER_HTTP
        assert path in WORKER_PATHS
    for path, port in probes["envoy"]:
        assert port == PROBES_PORT
        assert path in envoy_paths(port), path
    # The console's static server (`python -m gateway.static`; tests/web/test_static.py).
    for path, port in probes["web"]:
        assert (path, port) == (HEALTH_PATH, WEB_PORT)
