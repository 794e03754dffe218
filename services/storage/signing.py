"""HMAC-signed URLs of the local backend, served by the storage service's HTTP port.

`{base}/files/{file_id}?exp={unix seconds}&sig={hex}` where sig is HMAC-SHA256 of
`{METHOD}\\n{file_id}\\n{exp}\\n{size}` (size: the exact byte count a PUT must carry; 0 for
GET). The method is not in the URL: a GET URL used for a PUT (or the other way round)
fails verification. Expiry is checked against the server's clock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode

from services.common.errors import FailedPrecondition
from services.storage.config import StorageSettings


def signing_key(settings: StorageSettings) -> bytes:
    """The configured key; in dev/test one generated once per data dir."""
    configured = settings.storage_url_signing_key.get_secret_value()
    if configured:
        return configured.encode()
    if settings.aivera_env == "prod":
        raise FailedPrecondition("STORAGE_URL_SIGNING_KEY is required in prod")
    path = settings.local_root() / ".url-signing-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _write_secret(path, secrets.token_hex(32))
    return path.read_text().strip().encode()


def _write_secret(path: Path, value: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value)
    tmp.chmod(0o600)
    tmp.replace(path)


class UrlSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sig(self, method: str, file_id: str, exp: int, size: int) -> str:
        msg = f"{method.upper()}\n{file_id}\n{exp}\n{size}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def sign(self, base: str, method: str, file_id: str, exp: int, size: int = 0) -> str:
        query = urlencode({"exp": exp, "sig": self._sig(method, file_id, exp, size)})
        return f"{base.rstrip('/')}/files/{file_id}?{query}"

    def verify(
        self, method: str, file_id: str, exp: str, sig: str, size: int = 0, now: float | None = None
    ) -> bool:
        try:
            exp_at = int(exp)
        except ValueError:
            return False
        if exp_at < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self._sig(method, file_id, exp_at, size), sig)
