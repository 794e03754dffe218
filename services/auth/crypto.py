"""Provider keys at rest: AES-256-GCM under a versioned master key.

`MASTER_ENCRYPTION_KEY` is "v2:<base64url 32 bytes>,v1:<base64url 32 bytes>": the first
entry is the current version (encrypts), every listed one decrypts. A row stores the
version, a 12-byte random nonce and the ciphertext+tag. The associated data binds the
ciphertext to its row (user id, provider) and version, so a ciphertext copied into another
user's row, or relabelled with another version, fails authentication instead of
decrypting. Rotation: put the new version first, run `python -m services.auth
rotate-master-key` (re-encrypts every row under it), then drop the old entry.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("aivera.auth.crypto")

_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
NONCE_BYTES = 12


class MasterKeyError(ValueError):
    """The configured master key cannot be used (never includes key material)."""


class DecryptError(Exception):
    """A ciphertext does not authenticate (wrong row, tampered, or unknown version)."""


@dataclass(frozen=True)
class Sealed:
    version: str
    blob: bytes  # nonce || ciphertext || tag


def _decode_key(text: str, version: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"MASTER_ENCRYPTION_KEY {version}: not base64url") from None
    if len(raw) != 32:
        raise MasterKeyError(f"MASTER_ENCRYPTION_KEY {version}: must be 32 bytes, got {len(raw)}")
    return raw


def parse_master_keys(value: str) -> list[tuple[str, bytes]]:
    keys: list[tuple[str, bytes]] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        version, sep, material = part.partition(":")
        version = version.strip()
        if not sep or not _VERSION.match(version):
            raise MasterKeyError("MASTER_ENCRYPTION_KEY entries must look like 'v1:<base64url>'")
        if any(v == version for v, _ in keys):
            raise MasterKeyError(f"MASTER_ENCRYPTION_KEY lists version {version} twice")
        keys.append((version, _decode_key(material, version)))
    return keys


def _aad(user_id: str, provider: str, version: str) -> bytes:
    return f"aivera.auth.provider_key|{user_id}|{provider}|{version}".encode()


class SecretBox:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise MasterKeyError("no master key")
        self.current_version = keys[0][0]
        self._aead = {version: AESGCM(key) for version, key in keys}

    @classmethod
    def from_env(cls, value: str, *, env: str) -> SecretBox:
        keys = parse_master_keys(value)
        if not keys:
            if env not in ("dev", "test"):
                raise MasterKeyError(
                    "MASTER_ENCRYPTION_KEY is not set: refusing to start outside dev/test"
                )
            log.warning(
                "MASTER_ENCRYPTION_KEY is not set: using an ephemeral key (stored provider "
                "keys become unreadable after a restart; dev/test only)"
            )
            keys = [("dev", os.urandom(32))]
        return cls(keys)

    @property
    def versions(self) -> list[str]:
        return list(self._aead)

    def seal(self, plaintext: str, *, user_id: str, provider: str) -> Sealed:
        version = self.current_version
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + self._aead[version].encrypt(
            nonce, plaintext.encode(), _aad(user_id, provider, version)
        )
        return Sealed(version=version, blob=blob)

    def open(self, sealed: Sealed, *, user_id: str, provider: str) -> str:
        aead = self._aead.get(sealed.version)
        if aead is None or len(sealed.blob) <= NONCE_BYTES:
            raise DecryptError("unknown key version or short ciphertext")
        nonce, body = sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:]
        try:
            return aead.decrypt(nonce, body, _aad(user_id, provider, sealed.version)).decode()
        except InvalidTag:
            raise DecryptError("ciphertext does not authenticate") from None
