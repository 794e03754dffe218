"""File names from clients, made safe for object keys and local paths."""

from __future__ import annotations

import unicodedata

from services.common.errors import InvalidArgument

# A file system name is at most 255 bytes, and the local backend first writes
# `<name>.partial`: names stop short of that.
MAX_NAME_BYTES = 240


def _allowed(ch: str) -> bool:
    # Control (Cc), format (Cf: bidi overrides, zero-width), separators other than space,
    # surrogates and unassigned code points are removed.
    cat = unicodedata.category(ch)
    if ch == " ":
        return True
    return cat[0] != "C" and cat not in ("Zl", "Zp")


def sanitize(name: str, *, field: str = "filename") -> str:
    """The last path component, without control characters, `..` or leading/trailing
    dots and spaces, at most MAX_NAME_BYTES of UTF-8 (the extension kept). Unicode letters
    (Cyrillic, CJK, ...) are kept as they are (NFC)."""
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if _allowed(ch))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    while ".." in name:
        name = name.replace("..", ".")
    name = name.strip(" .")
    if len(name.encode()) > MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not dot or len(ext.encode()) > 16:
            stem, ext = name, ""
        budget = MAX_NAME_BYTES - (len(ext.encode()) + 1 if ext else 0)
        stem = stem.encode()[:budget].decode(errors="ignore").rstrip(" .")
        name = f"{stem}.{ext}" if ext else stem
    if not name:
        raise InvalidArgument(f"{field} is empty after removing unsafe characters", field=field)
    return name
