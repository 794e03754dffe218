"""Every call one service of the mesh makes to another — read from the code — is allowed
twice over: by the callee's declared callers (the protos' `callers` option, which the
runtime enforces) and by the callee's NetworkPolicy in every overlay."""

from __future__ import annotations

import re
from pathlib import Path

from services.common.access import all_services, method_table
from services.common.ports import SERVICES
from tests.deploy.test_kustomize import Doc, _labels, _named, _of, _selects, builds

ROOT = Path(__file__).resolve().parents[2]
# Who runs the code of each folder (services/common runs in every one of them).
CALLERS = {
    "chat": ("chat",),
    "rag": ("rag",),
    "storage": ("storage",),
    "training": ("training", "training-worker"),
    "common": ("chat", "rag", "storage", "training", "training-worker"),
}
_STUB = re.compile(r"(\w+)_pb2_grpc\.(\w+)Stub\b")

__all__ = ["builds"]  # the module fixture, shared with test_kustomize


def calls_in(folder: str) -> set[tuple[str, str]]:
    """(service, method) pairs the folder's code calls: a stub of the service is built
    there and the method is called on something (`.Method(`)."""
    by_name = {svc.name: svc for svc in all_services()}
    found: set[tuple[str, str]] = set()
    for path in (ROOT / "services" / folder).rglob("*.py"):
        text = path.read_text()
        for _, service in _STUB.findall(text):
            svc = by_name.get(service)
            if svc is None:
                continue
            for method in svc.methods:
                if re.search(rf"\.{method.name}\(", text):
                    found.add((svc.full_name, method.name))
    return found


def test_the_scan_finds_the_known_calls() -> None:
    # If these go missing the scan is broken, not the mesh.
    assert ("aivera.auth.v1.AuthInternalService", "GetProviderKey") in calls_in("chat")
    assert ("aivera.rag.v1.RagService", "Search") in calls_in("chat")
    assert ("aivera.auth.v1.AuthInternalService", "ExchangeToken") in calls_in("common")
    assert ("aivera.storage.v1.StorageService", "Download") in calls_in("common")
    assert ("aivera.storage.v1.StorageInternalService", "PurgeFile") in calls_in("training")


def test_every_call_is_allowed_by_the_callers_lists() -> None:
    table = method_table()
    for folder, workloads in CALLERS.items():
        for service, method in calls_in(folder):
            info = table[f"/{service}/{method}"]
            for workload in workloads:
                name = workload.removesuffix("-worker")
                assert not info.callers or name in info.callers, (folder, service, method)


def test_every_call_is_allowed_by_the_network_policies(builds: dict[str, list[Doc]]) -> None:
    for overlay, docs in builds.items():
        policies = _of(docs, "NetworkPolicy")
        for folder, workloads in CALLERS.items():
            for service, _ in calls_in(folder):
                target = service.split(".")[1]
                callee = _named(docs, "Deployment", target)
                port = SERVICES[target].grpc
                for workload in workloads:
                    caller = _labels(_named(docs, "Deployment", workload))
                    assert any(
                        _selects(p["spec"]["podSelector"], _labels(callee))
                        and _admits(p, caller, port)
                        for p in policies
                    ), (overlay, workload, target)


def _admits(policy: Doc, labels: dict[str, str], port: int) -> bool:
    for rule in policy["spec"].get("ingress", []):
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports and port not in ports:
            continue
        peers = rule.get("from")
        if peers is None or any(
            "podSelector" in peer and _selects(peer["podSelector"], labels) for peer in peers
        ):
            return True
    return False


def test_only_chat_and_training_may_read_provider_keys() -> None:
    # The point of the lists: the pods that parse users' files cannot ask for their keys.
    # Chat reads Gemini keys; training reads Replicate keys (image LoRAs).
    info = method_table()["/aivera.auth.v1.AuthInternalService/GetProviderKey"]
    assert info.callers == frozenset({"chat", "training"})
    for folder in ("rag", "storage"):
        assert ("aivera.auth.v1.AuthInternalService", "GetProviderKey") not in calls_in(folder)
