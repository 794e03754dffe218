"""Clone adapters on this replica's disk: fetched from storage once per replica, every
file's sha256 checked against the artifact when downloaded and again before the adapter
is loaded onto a model (a file changed on disk is caught too). A mismatch or an adapter
that does not parse is FAILED_PRECONDITION with ADAPTER_INVALID, and leaves nothing
behind: the download goes to a temporary folder that only a verified adapter leaves."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from services.chat.clients import Artifact, Files
from services.common.errors import FailedPrecondition, Reason

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


class AdapterInvalid(FailedPrecondition):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.ADAPTER_INVALID)


@dataclass(frozen=True)
class Adapter:
    """A verified adapter folder: `name` is its model (artifact) id."""

    name: str
    path: Path
    sha256: dict[str, str] = field(default_factory=dict)  # file name → expected hex


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(adapter: Adapter) -> None:
    """Raises AdapterInvalid unless every file the artifact lists is there with its
    sha256 (files recorded without one are only required to exist)."""
    for name, expected in adapter.sha256.items():
        path = adapter.path / name
        if not path.is_file():
            raise AdapterInvalid(f"adapter file {name} is missing")
        if expected and sha256_of(path.read_bytes()) != expected.lower():
            raise AdapterInvalid(f"adapter file {name} does not match its sha256")


def check_parses(folder: Path) -> None:
    """The config is a JSON object and the weights a safetensors file whose header reads
    (cheap: the tensors themselves are read at load time)."""
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterInvalid(f"{CONFIG} does not parse: {type(exc).__name__}") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise AdapterInvalid(f"{CONFIG} is not a peft adapter config")
    weights = folder / WEIGHTS
    if weights.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                if not list(f.keys()):
                    raise AdapterInvalid(f"{WEIGHTS} holds no tensors")
        except AdapterInvalid:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise AdapterInvalid(f"{WEIGHTS} does not parse: {type(exc).__name__}") from None


class AdapterFiles:
    """The adapters of this replica under `folder` (one subfolder per model id)."""

    def __init__(self, folder: Path, files: Files) -> None:
        self.folder = folder
        self.files = files

    async def fetch(self, artifact: Artifact) -> Adapter:
        names = {Path(name).name for name, _, _ in artifact.files}
        if CONFIG not in names:
            raise FailedPrecondition(
                "the clone's adapter is not ready (no adapter files)",
                reason=Reason.MODEL_NOT_READY,
            )
        adapter = Adapter(
            artifact.id,
            self.folder / artifact.id,
            {Path(name).name: sha for name, _, sha in artifact.files},
        )
        if (adapter.path / CONFIG).exists():
            try:
                await asyncio.to_thread(verify, adapter)
                return adapter
            except AdapterInvalid:
                # Changed on disk since: fetched again from storage below.
                await asyncio.to_thread(shutil.rmtree, adapter.path, True)
        tmp = self.folder / f".{artifact.id}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            for name, file_id, expected in artifact.files:
                data = await self.files.download(file_id)
                if expected and sha256_of(data) != expected.lower():
                    raise AdapterInvalid(
                        f"adapter file {Path(name).name} does not match its sha256"
                    )
                await asyncio.to_thread((tmp / Path(name).name).write_bytes, data)
            await asyncio.to_thread(check_parses, tmp)
            try:
                tmp.rename(adapter.path)
            except OSError:  # another turn got there first
                await asyncio.to_thread(verify, adapter)
        finally:
            if tmp.exists():
                await asyncio.to_thread(shutil.rmtree, tmp, True)
        return adapter
