"""Settings of the rag service (environment variables; see the README table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from services.common.config import CommonSettings
from services.common.ports import SERVICES
from services.rag.chunking import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE
from services.rag.parsers.base import (
    DEFAULT_DPI,
    DEFAULT_MAX_DOCUMENT_PIXELS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_PAGE_PIXELS,
    DEFAULT_MAX_TEXT_BYTES,
)


class RagSettings(CommonSettings):
    rag_port: int = SERVICES["rag"].grpc
    rag_http_port: int = SERVICES["rag"].http

    # Local state (the embedded index lives under DATA_DIR/qdrant unless QDRANT_PATH).
    data_dir: Path = Path(".data")
    # A Qdrant server (e.g. http://qdrant:6333); unset = the embedded engine below.
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_path: Path | None = None
    qdrant_collection: str = "aivera_chunks"
    # The embedded engine without QDRANT_URL: Qdrant Edge in process (exact search), or
    # qdrant-client's local mode (the previous default; slow past ~10k chunks).
    rag_index: Literal["edge", "qdrant-local"] = "edge"

    # Ingest defaults (IngestOptions with 0 take these).
    rag_render_dpi: int = DEFAULT_DPI
    rag_chunk_size: int = DEFAULT_CHUNK_SIZE
    rag_chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    # Document limits: over them IngestDocument answers RESOURCE_EXHAUSTED.
    rag_max_pages: int = 2000
    rag_max_blocks: int = 200_000
    # Input budgets (0 = none); over them IngestDocument answers INVALID_ARGUMENT naming
    # the limit. Pixels of one page image, from the page size before rendering (a larger
    # page renders at a lower dpi, down to 72, else is refused); of all page images of a
    # PDF; bytes of an HTML/Markdown/text/JSON file; nesting depth of a JSON annotation;
    # pixels of one image in a PDF (its declared size, checked before it is decoded).
    rag_max_page_pixels: int = DEFAULT_MAX_PAGE_PIXELS
    rag_max_document_pixels: int = DEFAULT_MAX_DOCUMENT_PIXELS
    rag_max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    rag_max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    rag_max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # Chunks per embedding batch (one EMBEDDING progress event each).
    rag_embed_batch: int = 64
    # Load the embedding model at start-up (health turns SERVING only with it loaded);
    # off = on the first ingest or search.
    rag_embedder_preload: bool = True
    # A PROCESSING document whose ingest has not reported for this long is considered
    # abandoned (its replica died) and may be ingested again.
    rag_ingest_stale_seconds: float = 300.0

    def qdrant_local_path(self) -> Path:
        return self.qdrant_path or self.data_dir / "qdrant"

    def edge_index_path(self) -> Path:
        """Where Qdrant Edge keeps its shards (one folder per collection)."""
        return self.qdrant_local_path() / "edge"
