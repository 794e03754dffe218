"""deploy/k8s: every overlay builds with `kubectl kustomize`, validates offline against the
Kubernetes schemas, and keeps the platform's rules (probes, limits, non-root, network
policies, GPU placement, no committed secrets)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.envoy_config import ENVOY_YAML
from services.common import ports

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
README = ROOT / "deploy" / "README.md"
# Oldest Kubernetes the manifests target (grpc probes, sleep pre-stop hooks, matchLabelKeys).
KUBERNETES_VERSION = "1.32"
BUILDS = ("dev", "prod", "prod+keda")
SERVICES = {name: p.grpc for name, p in ports.SERVICES.items()}
# Workloads with a mesh credential of their own (services/common/identity.py).
CREDENTIALED = ("chat", "rag", "storage", "training", "training-worker")
SECRETS = {
    "aivera-common": {"DATABASE_URL", "PAGE_TOKEN_KEY"},
    "aivera-auth": {
        "JWT_PRIVATE_KEYS",
        "MASTER_ENCRYPTION_KEY",
        "AIVERA_BOOTSTRAP_ADMIN_TOKEN",
        "TOKEN_HASH_KEY",
        "AUTH_SERVICE_CLIENTS",
    },
    **{f"aivera-service-{w}": {"AIVERA_SERVICE_SECRET"} for w in CREDENTIALED},
    "aivera-s3": {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"},
    "aivera-postgres": {"POSTGRES_PASSWORD"},
    "aivera-replicate": {"REPLICATE_API_TOKEN", "REPLICATE_WEBHOOK_SECRET"},
}
GPU_POOL_LABEL = ("aivera.io/node-pool", "gpu")
GPU = "nvidia.com/gpu"
WORKLOADS = ("Deployment", "StatefulSet", "Job")

Doc = dict[str, Any]


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed")
    return found


def _build(kubectl: str, name: str, tmp: Path) -> list[Doc]:
    if name == "prod+keda":  # the optional component on top of prod
        target = tmp / "prod-keda"
        target.mkdir()
        (target / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(K8S / "overlays" / "prod", target)],
                    "components": [os.path.relpath(K8S / "components" / "keda", target)],
                }
            )
        )
    else:
        target = K8S / "overlays" / name
    proc = subprocess.run(
        [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    kubectl = _kubectl()
    tmp = tmp_path_factory.mktemp("kustomize")
    with ThreadPoolExecutor(len(BUILDS)) as pool:
        docs = pool.map(lambda n: _build(kubectl, n, tmp), BUILDS)
        return dict(zip(BUILDS, docs, strict=True))


def _of(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _named(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in _of(docs, kind) if d["metadata"]["name"] == name]
    return doc


def _pod(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def _containers(workload: Doc, *, init: bool = True) -> list[Doc]:
    pod = _pod(workload)
    return [*(pod.get("initContainers", []) if init else []), *pod["containers"]]


def _labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # only matchLabels used here
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _all_builds(builds: dict[str, list[Doc]]) -> list[tuple[str, Doc]]:
    return [(name, doc) for name, docs in builds.items() for doc in docs]


# -- schema -----------------------------------------------------------------------------


def test_every_overlay_validates_against_kubernetes_schemas(
    builds: dict[str, list[Doc]],
) -> None:
    import kubernetes_validate

    for name, doc in _all_builds(builds):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked in test_keda_scales_workers_on_the_job_queue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            raise AssertionError(
                f"{name}: {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}"
            ) from None


def test_everything_is_in_the_namespace_and_labelled(builds: dict[str, list[Doc]]) -> None:
    for name, doc in _all_builds(builds):
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "aivera"
            continue
        assert doc["metadata"].get("namespace") == "aivera", (name, doc["metadata"]["name"])
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "aivera"
        if doc["kind"] in WORKLOADS:
            assert _labels(doc)["app.kubernetes.io/part-of"] == "aivera"


# -- pods -------------------------------------------------------------------------------


def test_workloads_have_probes_limits_and_run_as_non_root(builds: dict[str, list[Doc]]) -> None:
    for name, doc in _all_builds(builds):
        if doc["kind"] not in WORKLOADS:
            continue
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        pod = _pod(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        for container in _containers(doc):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert ctx["readOnlyRootFilesystem"] is True, where
            resources = container["resources"]
            for key in ("cpu", "memory"):
                assert key in resources["requests"] and key in resources["limits"], where
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), (where, image)
        if doc["kind"] == "Job":
            continue
        for container in _containers(doc, init=False):
            assert "readinessProbe" in container and "livenessProbe" in container, where


def test_grpc_services_use_grpc_health_probes(builds: dict[str, list[Doc]]) -> None:
    for name, docs in builds.items():
        for svc, port in SERVICES.items():
            (container,) = _containers(_named(docs, "Deployment", svc))
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["grpc"] == port
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"]["port"] == port, (name, svc, probe)
            # Liveness must not follow dependencies (a database outage would restart
            # every pod); readiness must (overall health, service "").
            assert container["livenessProbe"]["grpc"].get("service") == "liveness"
            assert container["readinessProbe"]["grpc"].get("service", "") == ""
            assert {"configMapRef": {"name": _config_map(docs)}} in container["envFrom"]


def _config_map(docs: list[Doc]) -> str:
    (cm,) = [d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith("aivera-config")]
    name: str = cm["metadata"]["name"]
    return name


def test_config_map_carries_the_platform_settings(builds: dict[str, list[Doc]]) -> None:
    for name, docs in builds.items():
        (cm,) = [
            d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith("aivera-config")
        ]
        data = cm["data"]
        for svc, port in SERVICES.items():
            assert data[f"{svc.upper()}_ADDR"] == f"{svc}:{port}"
            assert data[f"{svc.upper()}_PORT"] == str(port)
        assert data["AIVERA_ENV"] == ("dev" if name == "dev" else "prod")
        for key in ("STORAGE_BACKEND", "S3_REGION", "QDRANT_URL", "TRAINING_EXECUTOR"):
            assert data[key], key
        secret_keys = set().union(*SECRETS.values())
        assert not secret_keys & set(data), "a secret in the ConfigMap"


def test_migrations_job_migrates_every_service(builds: dict[str, list[Doc]]) -> None:
    for docs in builds.values():
        job = _named(docs, "Job", "aivera-migrate")
        migrated = {c["image"].split("/")[-1].split(":")[0] for c in _containers(job)}
        assert migrated == set(SERVICES)
        assert all(c["args"] == ["migrate"] for c in _containers(job))


# -- network ----------------------------------------------------------------------------


def test_every_pod_has_a_network_policy_and_ingress_is_denied_by_default(
    builds: dict[str, list[Doc]],
) -> None:
    for name, docs in builds.items():
        policies = _of(docs, "NetworkPolicy")
        deny = [p for p in policies if p["spec"]["podSelector"] == {}]
        assert deny and "ingress" not in deny[0]["spec"], name
        assert deny[0]["spec"]["policyTypes"] == ["Ingress"]
        own = [p for p in policies if p["spec"]["podSelector"]]
        for doc in docs:
            if doc["kind"] in ("Deployment", "StatefulSet"):
                labels = _labels(doc)
                assert any(_selects(p["spec"]["podSelector"], labels) for p in own), (
                    f"{name}: no NetworkPolicy for {doc['metadata']['name']}"
                )


def test_only_envoy_public_listener_is_reachable_from_outside(
    builds: dict[str, list[Doc]],
) -> None:
    for name, docs in builds.items():
        workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
        for policy in _of(docs, "NetworkPolicy"):
            for rule in policy["spec"].get("ingress", []):
                if rule.get("from"):
                    for peer in rule["from"]:  # every peer is the mesh or monitoring
                        assert "ipBlock" not in peer, (name, policy["metadata"]["name"])
                        if "namespaceSelector" in peer:
                            ns = peer["namespaceSelector"]["matchLabels"]
                            assert ns == {"kubernetes.io/metadata.name": "monitoring"}
                    continue
                # A rule open to any source: only Envoy's public port.
                selected = [
                    w["metadata"]["name"]
                    for w in workloads
                    if _selects(policy["spec"]["podSelector"], _labels(w))
                ]
                assert selected == ["envoy"], (name, policy["metadata"]["name"])
                assert [p["port"] for p in rule["ports"]] == [8080], name
        exposed = [
            s for s in _of(docs, "Service") if s["spec"].get("type") in ("LoadBalancer", "NodePort")
        ]
        assert exposed, f"{name}: no way in"
        for service in exposed:
            assert service["spec"]["selector"] == {"app.kubernetes.io/name": "envoy"}
            assert [p["targetPort"] for p in service["spec"]["ports"]] == ["public"]


def test_grpc_services_are_headless_for_per_request_balancing(
    builds: dict[str, list[Doc]],
) -> None:
    for docs in builds.values():
        for svc, port in SERVICES.items():
            service = _named(docs, "Service", svc)
            assert service["spec"]["clusterIP"] == "None"
            assert any(p["port"] == port and p["name"] == "grpc" for p in service["spec"]["ports"])


def test_envoy_runs_the_generated_config(builds: dict[str, list[Doc]]) -> None:
    for docs in builds.values():
        (cm,) = [
            d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith("envoy-config")
        ]
        assert cm["data"]["envoy.yaml"] == ENVOY_YAML.read_text()
        envoy = _named(docs, "Deployment", "envoy")
        volumes = {v["name"]: v for v in _pod(envoy)["volumes"]}
        assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
        (container,) = _containers(envoy)
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


# -- scaling and disruption -------------------------------------------------------------


def test_autoscaling_and_disruption_budgets(builds: dict[str, list[Doc]]) -> None:
    prod = builds["prod"]
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in _of(prod, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"chat", "rag", "storage"}
    for target, hpa in hpas.items():
        assert hpa["spec"]["minReplicas"] >= 2
        assert "replicas" not in _named(prod, "Deployment", target)["spec"]  # the HPA's
    pdbs = {p["metadata"]["name"] for p in _of(prod, "PodDisruptionBudget")}
    assert set(SERVICES) | {"envoy"} <= pdbs
    for deployment in _of(prod, "Deployment"):
        if _labels(deployment).get("app.kubernetes.io/component") == "api":
            affinity = _pod(deployment)["affinity"]["podAntiAffinity"]
            assert affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    dev = builds["dev"]
    assert _of(dev, "HorizontalPodAutoscaler") == []
    assert {d["spec"]["replicas"] for d in _of(dev, "Deployment")} == {1}


def test_datastores_in_cluster_for_dev_external_for_prod(builds: dict[str, list[Doc]]) -> None:
    dev_sets = {s["metadata"]["name"] for s in _of(builds["dev"], "StatefulSet")}
    assert {"postgres", "qdrant"} <= dev_sets
    # Prod: Postgres and S3 are external; Qdrant runs in the cluster (components/qdrant).
    for name in ("prod", "prod+keda"):
        assert {s["metadata"]["name"] for s in _of(builds[name], "StatefulSet")} == {"qdrant"}


def _qdrant_client_version() -> str:
    reqs = (ROOT / "requirements" / "rag.txt").read_text()
    (version,) = re.findall(r"^qdrant-client==(\S+)$", reqs, re.MULTILINE)
    return str(version)


def test_qdrant_is_a_stateful_set_with_a_volume_and_a_pinned_image(
    builds: dict[str, list[Doc]],
) -> None:
    client = _qdrant_client_version().split(".")[:2]
    for name, docs in builds.items():
        qdrant = _named(docs, "StatefulSet", "qdrant")
        assert qdrant["spec"]["replicas"] == 1, name  # one node: no cluster mode set up
        (container,) = _containers(qdrant)
        image = re.fullmatch(
            r"qdrant/qdrant:v(\d+)\.(\d+)\.(\d+)(-unprivileged)?", container["image"]
        )
        assert image, container["image"]  # a pinned release, never a floating tag
        assert list(image.groups()[:2]) == client, "server and qdrant-client versions differ"
        # Its data on a PersistentVolumeClaim per pod, mounted where Qdrant keeps it.
        (claim,) = qdrant["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        size = claim["spec"]["resources"]["requests"]["storage"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == "/qdrant/storage"
        assert container["readinessProbe"] and container["resources"]["limits"]["memory"]
        if name.startswith("prod"):
            assert size == "50Gi"
        # The Service QDRANT_URL names, reachable only from the platform's pods.
        (cm,) = [
            d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith("aivera-config")
        ]
        assert cm["data"]["QDRANT_URL"] == "http://qdrant:6333", name
        service = _named(docs, "Service", "qdrant")
        assert {p["port"] for p in service["spec"]["ports"]} == {6333, 6334}
        assert _selects({"matchLabels": service["spec"]["selector"]}, _labels(qdrant))
        policy = _named(docs, "NetworkPolicy", "qdrant")
        assert _selects(policy["spec"]["podSelector"], _labels(qdrant))
        (rule,) = policy["spec"]["ingress"]
        (source,) = rule["from"]
        assert source == {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "aivera"}}}


# -- GPU pool ---------------------------------------------------------------------------


def _gpu_pool_only(pod: Doc) -> bool:
    key, value = GPU_POOL_LABEL
    selector = pod.get("nodeSelector", {}).get(key) == value
    terms = (
        pod.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    affinity = bool(terms) and all(
        any(
            e["key"] == key and e["operator"] == "In" and e["values"] == [value]
            for e in term.get("matchExpressions", [])
        )
        for term in terms
    )
    return selector and affinity


def _tolerates_gpu(pod: Doc) -> bool:
    return any(t.get("key") == GPU for t in pod.get("tolerations", []))


def test_gpu_workers_land_only_on_the_gpu_pool(builds: dict[str, list[Doc]]) -> None:
    for name, docs in builds.items():
        for doc in docs:
            if doc["kind"] not in WORKLOADS:
                continue
            pod = _pod(doc)
            wants_gpu = any(GPU in c["resources"].get("limits", {}) for c in _containers(doc))
            if wants_gpu:
                assert _gpu_pool_only(pod) and _tolerates_gpu(pod), (name, doc["metadata"])
            else:  # nothing else may take a GPU node
                assert not _tolerates_gpu(pod) and not _gpu_pool_only(pod), name
    for name in ("prod", "prod+keda"):
        worker = _named(builds[name], "Deployment", "training-worker")
        (container,) = _containers(worker)
        assert container["resources"]["limits"][GPU] == 1
        assert container["args"] == ["worker"]
        assert _pod(worker)["terminationGracePeriodSeconds"] >= 300  # time to checkpoint
        volumes = {v["name"]: v for v in _pod(worker)["volumes"]}
        assert volumes["base-models"] == {
            "name": "base-models",
            "persistentVolumeClaim": {"claimName": "base-models", "readOnly": True},
        }
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["base-models"]["mountPath"] == "/models"
        assert mounts["base-models"]["readOnly"] is True
        _named(builds[name], "PersistentVolumeClaim", "base-models")


def test_keda_scales_workers_on_the_job_queue(builds: dict[str, list[Doc]]) -> None:
    docs = builds["prod+keda"]
    scaled = _named(docs, "ScaledObject", "training-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["namespace"] == "aivera"
    assert _named(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    assert "select" in trigger["metadata"]["query"].lower()
    auth = _named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "connection" and ref["key"] in SECRETS[ref["name"]]
    # KEDA owns the replica count, and no other autoscaler targets the workers.
    assert "replicas" not in _named(docs, "Deployment", "training-worker")["spec"]
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in _of(docs, "HorizontalPodAutoscaler")}
    assert "training-worker" not in targets
    assert not _of(builds["prod"], "ScaledObject")  # optional: only with the component


# -- secrets ----------------------------------------------------------------------------


def _secret_refs(doc: Doc) -> set[tuple[str, str | None]]:
    refs: set[tuple[str, str | None]] = set()
    for container in _containers(doc):
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                refs.add((source["secretRef"]["name"], None))
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
    return refs


def test_no_secret_values_committed_and_every_secret_documented(
    builds: dict[str, list[Doc]],
) -> None:
    readme = README.read_text()
    for name, docs in builds.items():
        assert _of(docs, "Secret") == [], f"{name}: a Secret with values in the build"
        for doc in docs:
            if doc["kind"] not in WORKLOADS:
                continue
            for secret, key in _secret_refs(doc):
                assert secret in SECRETS, (name, secret)
                assert key is None or key in SECRETS[secret], (name, secret, key)
    for secret, keys in SECRETS.items():
        template = yaml.safe_load((K8S / "secret-templates" / f"{secret}.yaml").read_text())
        assert template["metadata"]["name"] == secret
        assert set(template["stringData"]) == keys
        assert all(v == "" for v in template["stringData"].values()), "a value in a template"
        assert secret in readme
        for key in keys:
            assert key in readme, key
    auth = _named(builds["prod"], "Deployment", "auth")
    assert ("aivera-auth", None) in _secret_refs(auth)
    for other in ("storage", "rag", "chat", "training"):  # signing keys stay in auth
        assert ("aivera-auth", None) not in _secret_refs(
            _named(builds["prod"], "Deployment", other)
        )
    # The Replicate token reaches the training service only (not the pods parsing files,
    # nor the workers, which train locally).
    for doc in builds["prod"]:
        if doc["kind"] in WORKLOADS and ("aivera-replicate", None) in _secret_refs(doc):
            assert doc["metadata"]["name"] == "training", doc["metadata"]["name"]
    training = _named(builds["prod"], "Deployment", "training")
    assert ("aivera-replicate", None) in _secret_refs(training)


def test_each_workload_mounts_its_own_credential_only(builds: dict[str, list[Doc]]) -> None:
    for name, docs in builds.items():
        for doc in docs:
            if doc["kind"] not in WORKLOADS:
                continue
            mounted = {
                secret for secret, _ in _secret_refs(doc) if secret.startswith("aivera-service-")
            }
            workload = doc["metadata"]["name"]
            expected = {f"aivera-service-{workload}"} if workload in CREDENTIALED else set()
            assert mounted == expected, (name, workload, mounted)
