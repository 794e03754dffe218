"""The local backend's signed URLs on the storage service's HTTP port.

GET  /files/{id}?exp=..&sig=..  streams a READY local file.
PUT  /files/{id}?exp=..&sig=..  stores the body of an UPLOADING local file; the body must
                                be exactly the declared size (content-length).
A bad or expired signature, or a URL signed for the other method, answers 403; the
answer does not tell whether the file exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from urllib.parse import quote

from aiohttp import web

from services.storage.backends.base import CHUNK
from services.storage.files import Files
from services.storage.signing import UrlSigner
from services.storage.store import FileRow


def routes(files: Files, signer: UrlSigner) -> Callable[[web.Application], None]:
    """The signed-URL routes over the built domain (`server.Wiring.http_routes`)."""

    async def _authorised(request: web.Request, method: str) -> FileRow:
        try:
            file_id = uuid.UUID(request.match_info["id"])
        except ValueError:
            raise web.HTTPForbidden(text="invalid or expired signature") from None
        row = await files.store.get_any_user(file_id)
        exp = request.query.get("exp", "")
        sig = request.query.get("sig", "")
        size = row.size_bytes if (row is not None and method == "PUT") else 0
        if row is None or not signer.verify(method, str(file_id), exp, sig, size):
            raise web.HTTPForbidden(text="invalid or expired signature")
        return row

    async def get_file(request: web.Request) -> web.StreamResponse:
        row = await _authorised(request, "GET")
        if row.status != "ready" or row.backend != "local":
            raise web.HTTPNotFound(text="file is not available")
        local = files.local
        response = web.StreamResponse(
            headers={
                "Content-Type": row.content_type or "application/octet-stream",
                "Content-Length": str(row.size_bytes),
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row.filename)}",
                "Cache-Control": "private, no-store",
            }
        )
        await response.prepare(request)
        async for chunk in local.read(row.storage_path):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def put_file(request: web.Request) -> web.Response:
        row = await _authorised(request, "PUT")
        if row.status != "uploading" or row.backend != "local":
            raise web.HTTPConflict(text="file is not waiting for an upload")
        if request.content_length is None:
            raise web.HTTPLengthRequired(text="content-length is required")
        if request.content_length != row.size_bytes:
            raise web.HTTPBadRequest(
                text=f"content-length must be the declared size, {row.size_bytes}"
            )
        writer = await files.local.open_writer(row.storage_path, row.size_bytes)
        total = 0
        try:
            async for chunk in request.content.iter_chunked(CHUNK):
                total += len(chunk)
                if total > row.size_bytes:
                    raise web.HTTPBadRequest(text="body is longer than the declared size")
                await writer.write(chunk)
            if total != row.size_bytes:
                raise web.HTTPBadRequest(text="body is shorter than the declared size")
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise
        return web.Response(status=200, text="ok")

    def add(app: web.Application) -> None:
        app.router.add_get("/files/{id}", get_file, allow_head=False)
        app.router.add_put("/files/{id}", put_file)

    return add
