"""Fixtures of the rag domain tests: a Unicode font for generated PDFs, the MiniLM embedder
(loaded once per session) and a fresh chunk index per test, once for each embedded engine
(Qdrant Edge, the default, and qdrant-client's local mode, the QdrantIndex code path that
also talks to a server)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.rag.edge_index import EdgeIndex
from services.rag.embedder import MiniLmEmbedder
from services.rag.index import Index, QdrantIndex

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
)


@pytest.fixture(scope="session")
def cyrillic_font() -> Path:
    """A TTF with Cyrillic glyphs for fpdf2 (DejaVu Sans, else whatever fc-match finds)."""
    for candidate in _FONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    try:
        found = subprocess.run(
            ["fc-match", "-f", "%{file}", "sans:lang=ru"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        found = ""
    if found.endswith(".ttf") and Path(found).is_file():
        return Path(found)
    pytest.skip("no TTF font with Cyrillic glyphs on this machine")


@pytest.fixture(scope="session")
def embedder() -> MiniLmEmbedder:
    model = MiniLmEmbedder()
    model.load()
    return model


ENGINES = ("edge", "qdrant-local")


def open_engine(engine: str, path: Path, dim: int) -> Index:
    """An embedded index of either engine at ``path``."""
    if engine == "edge":
        return EdgeIndex.open(dim=dim, path=path)
    return QdrantIndex.open(dim=dim, path=path)


@pytest.fixture(params=ENGINES)
async def index(
    request: pytest.FixtureRequest, tmp_path: Path, embedder: MiniLmEmbedder
) -> AsyncIterator[Index]:
    idx = open_engine(request.param, tmp_path / "index", embedder.dim)
    await idx.ensure_collection()
    try:
        yield idx
    finally:
        await idx.close()
