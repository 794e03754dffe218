"""The Dockerfiles (no Docker engine here: checked statically) and the images the
manifests expect: one multi-stage, non-root image per service on a pinned base, a CUDA base
for the training worker, entry points that match the Kubernetes args."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "storage", "rag", "chat", "training")
PORTS = {"auth": 50051, "storage": 50052, "rag": 50053, "chat": 50054, "training": 50055}


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


def test_api_images_do_not_install_test_tools() -> None:
    for svc in SERVICES:
        text = (ROOT / "services" / svc / "Dockerfile").read_text()
        assert "sed '/^# tests, lint, bench/,$d' requirements.txt" in text, svc
    requirements = (ROOT / "requirements.txt").read_text()
    tail = requirements[requirements.index("# tests, lint, bench") :]
    assert "pytest==" in tail  # the block the images drop is still where they expect it
