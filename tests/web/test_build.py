"""The built console: its first load within the size budget, markup the strict CSP
allows (no inline script or style), and the vitest unit and component tests."""

from __future__ import annotations

import gzip
import re
import subprocess

from tests.web.conftest import DIST, WEB, needs_build

BUDGET_BYTES = 350 * 1024


def first_load() -> dict[str, int]:
    """Gzipped sizes of index.html and the scripts and stylesheets it loads."""
    html = (DIST / "index.html").read_text()
    sizes = {"/index.html": len(gzip.compress(html.encode(), 9))}
    for ref in re.findall(r'(?:src|href)="(/assets/[^"]+\.(?:js|css))"', html):
        sizes[ref] = len(gzip.compress((DIST / ref.lstrip("/")).read_bytes(), 9))
    return sizes


@needs_build
def test_first_load_is_within_the_budget() -> None:
    sizes = first_load()
    assert any(ref.endswith(".js") for ref in sizes), sizes  # the app itself is counted
    total = sum(sizes.values())
    print(f"console first load: {total / 1024:.1f} KB gzipped ({len(sizes)} files)")
    assert total <= BUDGET_BYTES, sizes


@needs_build
def test_markup_needs_no_inline_script_or_style() -> None:
    html = (DIST / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/assets/' in attrs and not body.strip() for attrs, body in scripts)
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    for js in DIST.glob("assets/*.js"):
        # Nothing the CSP would block at run time: no eval or Function constructors.
        text = js.read_text()
        assert "eval(" not in text, js.name


@needs_build
def test_vitest_unit_and_component_tests() -> None:
    run = subprocess.run(
        ["npx", "--no-install", "vitest", "run", "--reporter=dot"],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert re.search(r"Tests\s+\S*\d+ passed", re.sub(r"\x1b\[[0-9;]*m", "", run.stdout))
