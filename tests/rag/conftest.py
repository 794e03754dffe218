"""Fixtures of the rag domain tests: a Unicode font for generated PDFs, the MiniLM embedder
(loaded once per session) and a fresh local-mode Qdrant index per test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.rag.embedder import MiniLmEmbedder
from services.rag.index import ChunkIndex

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


@pytest.fixture
async def index(tmp_path: Path, embedder: MiniLmEmbedder) -> AsyncIterator[ChunkIndex]:
    idx = ChunkIndex.open(dim=embedder.dim, path=tmp_path / "qdrant")
    await idx.ensure_collection()
    try:
        yield idx
    finally:
        await idx.close()
