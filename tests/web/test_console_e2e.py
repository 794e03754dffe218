"""The console end to end: Debian's headless Chromium (driven by playwright-core from
web/node_modules; no browser is downloaded) against the real auth, storage, RAG and chat
services behind the real local gateway, which serves web/dist on the same origin as
gRPC-web and the signed file URLs. Sign in, set the Gemini key, create and rename a chat,
attach a PDF (signed upload URL, ingestion), stream a markdown answer (drawn as a list and a
code block), open its source on the page image from the sources list and from the answer's
citation marker, reload, switch to English, sign out. Screenshots go to web/test-results/."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from fpdf import FPDF

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from aivera.chat.v1 import chat_pb2, chat_pb2_grpc
from gateway.config import GatewaySettings
from gateway.proxy import Gateway
from gateway.routes import UPSTREAMS
from tests.client.mesh import Mesh, start_mesh
from tests.helpers.gemini import Reply
from tests.helpers.services import bearer, channel
from tests.web.conftest import DIST, WEB, chromium_path, needs_browser

pytestmark = needs_browser

KEY = "AIzaSyWEBCONSOLE0000000000000000000000042"
# Markdown, cut where a model cuts it: a citation, a list and a code fence arrive in pieces.
TOKENS = [
    "The ",
    "drawings ",
    "AR-12 ",
    "show ",
    "the ",
    "**faca",
    "des** ",
    "of ",
    "the ",
    "building [1",
    "].\n\n- ",
    "sheet ",
    "AR-12\n",
    "- ",
    "sheet ",
    "PV-1\n\n``",
    "`\nPV-1: ",
    "2400 m3/h\n",
    "```",
]
VENTILATION = ["PV-1 ", "serves ", "the ", "offices ", "of ", "the ", "first ", "floor."]
LONG = [f"Sheet {n}. " for n in range(1, 200)]


@dataclass
class Console:
    mesh: Mesh
    gateway: Gateway
    base_url: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
async def console(database_url: str) -> AsyncIterator[Console]:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    # Signed file URLs name the gateway's origin, as under `make run`.
    async with start_mesh(
        database_url, storage_public_url=origin, access_token_ttl_seconds=3600
    ) as mesh:
        ports = {
            "auth": mesh.auth.grpc_port,
            "storage": mesh.storage.grpc_port,
            "rag": mesh.rag_app.grpc_port,
            "chat": mesh.chat.grpc_port,
        }
        settings = GatewaySettings(
            port=port,
            admin_port=0,
            upstreams={name: f"127.0.0.1:{ports.get(name, 1)}" for name in UPSTREAMS},
            web_root=DIST,
            storage_http=f"127.0.0.1:{mesh.storage.http_port}",
        )
        gw = Gateway(settings)
        await gw.start()
        try:
            yield Console(mesh, gw, origin)
        finally:
            await gw.stop()


def drawing_pdf() -> bytes:
    pdf = FPDF(unit="pt", format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_font("Helvetica", size=11)
    pdf.add_page()
    pdf.set_xy(72, 150)
    pdf.multi_cell(300, 14, "The architectural drawings AR-12 show the facades of the building.")
    pdf.set_xy(320, 420)
    pdf.multi_cell(220, 14, "Ventilation system PV-1 serves the offices of the first floor.")
    return bytes(pdf.output())


async def new_user(mesh: Mesh) -> str:
    async with channel(mesh.auth) as ch:
        admin_session = await auth_pb2_grpc.AuthServiceStub(ch).ExchangeStaticToken(
            auth_pb2.ExchangeStaticTokenRequest(static_token=mesh.bootstrap_token)
        )
        created = await auth_pb2_grpc.AuthAdminServiceStub(ch).CreateUser(
            auth_pb2.CreateUserRequest(username="web-" + uuid.uuid4().hex[:10]),
            metadata=bearer(admin_session.access_token),
        )
    token: str = created.static_token
    return token


async def drive(console: Console, env: dict[str, str]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(WEB / "e2e" / "console.e2e.mjs"),
        cwd=WEB,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 150)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()[-3000:]
    found: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in found, (
        f"{found['error']}\nsteps: {found['steps']}\n{err.decode()[-2000:]}"
    )
    return found


async def test_console_end_to_end(console: Console, tmp_path: Path) -> None:
    mesh = console.mesh
    mesh.gemini.reset()
    mesh.gemini.valid_keys = {KEY}  # only the key the page set works
    # The answer streams in pieces with a pause between them, as a model does.
    mesh.gemini.script(
        Reply.tokens(TOKENS, delay=0.25, output_tokens=len(TOKENS)),
        # Slow enough to reload the page in the middle of it.
        Reply.tokens(VENTILATION, delay=0.4),
        # Longer than the test: it ends only by the stop button.
        Reply.tokens(LONG, delay=0.3),
    )
    static_token = await new_user(mesh)
    doc = tmp_path / "AR-12 drawings.pdf"
    doc.write_bytes(drawing_pdf())
    results = WEB / "test-results"
    found = await drive(
        console,
        {
            "BASE_URL": console.base_url + "/",
            "STATIC_TOKEN": static_token,
            "GEMINI_KEY": KEY,
            "DOC_PATH": str(doc),
            "CHROMIUM": chromium_path() or "",
            "OUT": str(results),
        },
    )
    assert found["steps"] == [
        "signed-in",
        "key-set",
        "chat-created",
        "attached",
        "streamed",
        "source-opened",
        "cited",
        "reattached",
        "stopped",
        "reloaded",
        "english",
        "profile-set",
        "signed-out",
    ]
    # Tokens: never in a URL, the access token never in storage (only the tab's refresh).
    assert found["requestsWithToken"] == []
    assert [k for k, _ in found["storage"]["session"]] == ["aivera.refresh"]
    assert found["storage"]["local"] == [] or all(
        k == "aivera.locale" for k, _ in found["storage"]["local"]
    )
    assert found["keyInputAfterSave"] == "" and found["keyInPage"] is False
    # The model was called with the key set through the page.
    assert mesh.gemini.requests and mesh.gemini.requests[-1].api_key == KEY
    # Streaming: the text grew over several updates, not in one burst at the end (and
    # never shrank: unfinished markdown is drawn as what it becomes).
    # (textContent: the paragraph, the two list items, the code block)
    answer = (
        "The drawings AR-12 show the facades of the building [1]."
        "sheet AR-12sheet PV-1PV-1: 2400 m3/h"
    )
    assert found["answer"] == answer
    lengths = [t["len"] for t in found["tokens"]]
    assert len(lengths) >= 4, found["tokens"]
    assert lengths == sorted(lengths) and lengths[0] < len(answer)
    # Markdown drawn as elements; the marker [1] is a citation of the first search result.
    assert found["markdown"] == {
        "strong": ["facades"],
        "items": ["sheet AR-12", "sheet PV-1"],
        "code": ["PV-1: 2400 m3/h"],
        "cites": ["1"],
        "literalMarks": False,
    }
    assert found["citeLabel"].startswith("Открыть источник [1]: ") and found["citeLabel"].endswith(
        ", стр. 1"
    )
    assert found["citeViewer"] == {"title": "Источник: страница 1", "box": 1}
    # Sources: the block's box drawn over the page image, fetched on this origin.
    assert found["sourceCount"] >= 1 and found["box"] == 1
    assert found["pageImageSameOrigin"] is True
    assert found["pageImage"]["status"] == 200 and found["pageImage"]["type"] == "image/png"
    assert found["pageImage"]["bytes"] > 1000
    # Reloaded mid-answer: the running turn was followed again and shown whole, once.
    assert found["reattachedAnswer"] == "".join(VENTILATION)
    # Stopped: the partial answer is kept and marked as stopped.
    stopped = found["stoppedAnswer"]
    assert "Sheet 1." in stopped and "Остановлено" in stopped
    assert "Sheet 199." not in stopped
    # In English, the service's own localized message (not the catalogue's fallback).
    error = found["englishError"]
    assert error and error != "Invalid input." and not any("а" <= ch <= "я" for ch in error.lower())
    # A reload kept the session (the refresh token rotated) and the history.
    assert found["refreshRotated"] is True and found["historyAfterReload"] >= 2
    # Sign-out revoked the session on the server and left nothing in the tab.
    assert found["afterSignOut"] == []
    async with channel(mesh.auth) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await auth_pb2_grpc.AuthServiceStub(ch).RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token=found["lastRefresh"])
            )
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # The profile chosen on the settings panel is the user's stored setting.
    async with channel(mesh.auth) as ch:
        session = await auth_pb2_grpc.AuthServiceStub(ch).ExchangeStaticToken(
            auth_pb2.ExchangeStaticTokenRequest(static_token=static_token)
        )
    async with channel(mesh.chat) as ch:
        settings = await chat_pb2_grpc.ChatServiceStub(ch).GetSettings(
            chat_pb2.GetSettingsRequest(), metadata=bearer(session.access_token)
        )
    assert settings.model_profile == chat_pb2.MODEL_PROFILE_COMPLEX
    # The strict CSP held: nothing blocked, nothing logged as an error.
    assert found["cspViolations"] == []
    assert found["consoleErrors"] == []
    for name in ("01-sign-in", "03-attached", "04-streaming", "05-source", "09-signed-out"):
        assert (results / f"{name}.png").stat().st_size > 0
