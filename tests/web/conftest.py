"""The browser console's tests: its build (size, CSP-clean markup, vitest), the gateway's
console routes, and the console end to end in Debian's headless Chromium against a real
mesh behind the real local gateway. What is missing (Chromium, node, the build) makes the
tests that need it skip, saying which `make` target brings it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
DIST = WEB / "dist"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing_build() -> str | None:
    """Why the built console cannot be tested here, or None."""
    if shutil.which("node") is None:
        return "node is not installed: the console cannot be built or driven here"
    if not (WEB / "node_modules" / ".bin" / "vitest").exists():
        return "web/node_modules is missing: run `make web` (or `make setup`)"
    if not (DIST / "index.html").is_file():
        return "web/dist is missing: run `make web` (or `make setup`) to build the console"
    return None


def missing_browser() -> str | None:
    """Why the console cannot be driven in a browser here, or None."""
    if (why := missing_build()) is not None:
        return why
    if chromium_path() is None:
        return (
            "Debian's chromium is not installed: `make chromium` installs it where it runs as "
            "root with apt-get"
        )
    return None


needs_build = pytest.mark.skipif(missing_build() is not None, reason=missing_build() or "")
needs_browser = pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")
