"""A loopback server speaking Replicate's HTTP API (https://replicate.com/docs/reference/http)
closely enough for the training service's remote trainer and generations to run against it.

Endpoints (all under `Authorization: Bearer <token>`, 401 otherwise, as Replicate answers):
`GET /v1/account`; `GET /v1/models/{owner}/{name}`, `POST /v1/models` (409 when it
exists); `POST /v1/files` (multipart field `content`) answering the file object with
`urls.get`, `GET /v1/files/{id}` and `/v1/files/{id}/download`;
`POST /v1/models/{owner}/{name}/versions/{version}/trainings`, `GET /v1/trainings` (the
account's trainings, newest first, `list_page_size` a page: `{"next", "previous",
"results"}` with `?cursor=` URLs), `GET /v1/trainings/{id}`,
`POST /v1/trainings/{id}/cancel`; `POST /v1/predictions`, `GET /v1/predictions/{id}`,
`POST /v1/predictions/{id}/cancel`. Output files (a training's `trained_model.tar`, a
prediction's PNGs) are served without a token under `/delivery/…`, as replicate.delivery
serves them. Errors have Replicate's shape (`{"title", "detail", "status"}`).

Trainings and predictions move `starting → processing → succeeded` (one `step_seconds`
apart, logs with a tqdm progress bar on the way) and POST the object to the `webhook` given
at creation for the events in `webhook_events_filter`, signed per Standard Webhooks
(`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` keyed by
the base64 part of the `whsec_` secret) — implemented here from the spec, independently
of the service's verifier. Knobs: `fail_trainings` / `fail_predictions` (an error text:
the object ends `failed` with it), `stall` (stays `processing` until cancelled),
`drop_webhooks` (nothing is sent: polling must finish the job), `down` (every API call
answers 503), `lose_create_answers` (that many training creates are carried out, then the
connection is dropped before the answer: the caller never learns the id).
Records: `cancels` (ids cancelled), `deliveries` (every webhook sent, with
its headers and body, to replay), `training_zips` (the names inside each uploaded zip),
`refused` (calls answered 503 while down), `delivery_auth` (the Authorization header of
each output download: outputs need none, and a client must not send its token there).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import io
import json
import os
import secrets
import struct
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

# What the flux trainers' `aspect_ratio` input gives, in pixels.
ASPECT_SIZES = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
}
TRAINER = "ostris/flux-dev-lora-trainer"
# A version id of the trainer (64 hex, as Replicate's are; this server's own).
TRAINER_VERSION = hashlib.sha256(b"fake flux-dev-lora-trainer").hexdigest()


def new_id() -> str:
    """Replicate's ids: 26 lowercase base32 characters."""
    return base64.b32encode(os.urandom(16)).decode().lower().rstrip("=")[:26]


def whsec() -> str:
    """A webhook signing secret in Replicate's format."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` value for one secret (Standard Webhooks, version v1)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def safetensors(values: list[float]) -> bytes:
    data = struct.pack(f"<{len(values)}f", *values)
    header = json.dumps(
        {
            "lora_unet.weight": {
                "dtype": "F32",
                "shape": [len(values)],
                "data_offsets": [0, len(data)],
            }
        }
    ).encode()
    return struct.pack("<Q", len(header)) + header + data


def weights_tar(seed: str) -> bytes:
    """A `trained_model.tar` as the flux LoRA trainers output: the LoRA as safetensors."""
    digest = hashlib.sha256(seed.encode()).digest()
    payload = safetensors([b / 255.0 for b in digest[:16]])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("output/flux_train_replicate/lora.safetensors")
        info.size = len(payload)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG (real bytes: any decoder reads it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + bytes(rgb) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(row * height, 6))
        + chunk(b"IEND", b"")
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, title: str, detail: str) -> web.Response:
    return web.json_response({"title": title, "detail": detail, "status": status}, status=status)


@dataclass
class Delivery:
    url: str
    headers: dict[str, str]
    body: str
    status: int  # the receiver's answer (0: unreachable)


@dataclass
class ReplicateServer:
    # token → the account's username; the first is the "system" account.
    tokens: dict[str, str] = field(
        default_factory=lambda: {"r8_" + secrets.token_urlsafe(30): "aivera-system"}
    )
    webhook_secret: str = field(default_factory=whsec)
    step_seconds: float = 0.05
    fail_trainings: str = ""
    fail_predictions: str = ""
    drop_webhooks: bool = False
    down: bool = False
    lose_create_answers: int = 0
    list_page_size: int = 100
    cancels: list[str] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    training_zips: dict[str, list[str]] = field(default_factory=dict)  # training id → names
    refused: int = 0
    delivery_auth: list[str] = field(default_factory=list)  # Authorization of output GETs
    trainings: dict[str, dict[str, Any]] = field(default_factory=dict)
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # "owner/name" → model object; the trainer exists from the start.
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, tuple[str, str, bytes, str]] = field(default_factory=dict)
    outputs: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path → bytes, type
    port: int = 0
    _runner: web.AppRunner | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _owner: dict[str, str] = field(default_factory=dict)  # object id → token
    _http: aiohttp.ClientSession | None = None
    _go: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._go.set()

    @property
    def stall(self) -> bool:
        """While True, running trainings and predictions stay `processing` (until
        cancelled)."""
        return not self._go.is_set()

    @stall.setter
    def stall(self, value: bool) -> None:
        if value:
            self._go.clear()
        else:
            self._go.set()

    async def _hold(self, obj: dict[str, Any]) -> None:
        while not self._go.is_set() and obj["status"] == "processing":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._go.wait(), self.step_seconds)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        """The first (system) account's token."""
        return next(iter(self.tokens))

    def add_account(self, username: str) -> str:
        """A new account; its token."""
        token = "r8_" + secrets.token_urlsafe(30)
        self.tokens[token] = username
        return token

    async def __aenter__(self) -> ReplicateServer:
        owner, name = TRAINER.split("/")
        self.models[TRAINER] = self._model(owner, name, TRAINER_VERSION)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_get("/v1/account", self._account)
        r.add_get("/v1/models/{owner}/{name}", self._get_model)
        r.add_post("/v1/models", self._create_model)
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files/{id}", self._file)
        r.add_get("/v1/files/{id}/download", self._file_download)
        r.add_post("/v1/models/{owner}/{name}/versions/{version}/trainings", self._create_training)
        r.add_get("/v1/trainings", self._list_trainings)
        r.add_get("/v1/trainings/{id}", functools.partial(self._get_run, self.trainings))
        r.add_post("/v1/trainings/{id}/cancel", functools.partial(self._cancel_run, self.trainings))
        r.add_post("/v1/predictions", self._create_prediction)
        r.add_get("/v1/predictions/{id}", functools.partial(self._get_run, self.predictions))
        r.add_post(
            "/v1/predictions/{id}/cancel", functools.partial(self._cancel_run, self.predictions)
        )
        r.add_get("/delivery/{path:.+}", self._delivery)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- helpers for tests ------------------------------------------------------------------
    def signed_headers(self, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.webhook_secret, msg_id, timestamp, body),
        }

    def token_of(self, object_id: str) -> str:
        """The token a training or prediction was created with."""
        return self._owner[object_id]

    def finish_stalled(self) -> None:
        """Let stalled trainings and predictions run on to their end."""
        self.stall = False

    # -- auth -------------------------------------------------------------------------------
    def _caller(self, request: web.Request) -> str | web.Response:
        if self.down:
            self.refused += 1
            return _error(503, "Service Unavailable", "Replicate is temporarily unavailable")
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if token not in self.tokens:
            return _error(401, "Unauthenticated", "You did not pass a valid authentication token")
        return token

    def _mine(
        self, objects: dict[str, dict[str, Any]], oid: str, token: str
    ) -> dict[str, Any] | None:
        obj = objects.get(oid)
        return obj if obj is not None and self._owner.get(oid) == token else None

    # -- account and models -----------------------------------------------------------------
    async def _account(self, request: web.Request) -> web.Response:
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        username = self.tokens[token]
        return web.json_response(
            {"type": "user", "username": username, "name": username, "github_url": None}
        )

    def _model(self, owner: str, name: str, version: str | None) -> dict[str, Any]:
        latest = (
            {"id": version, "created_at": _now(), "cog_version": "0.9.0", "openapi_schema": {}}
            if version
            else None
        )
        return {
            "url": f"https://replicate.com/{owner}/{name}",
            "owner": owner,
            "name": name,
            "description": None,
            "visibility": "private",
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "run_count": 0,
            "cover_image_url": None,
            "default_example": None,
            "latest_version": latest,
        }

    async def _get_model(self, request: web.Request) -> web.Response:
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        key = f"{request.match_info['owner']}/{request.match_info['name']}"
        model = self.models.get(key)
        if model is None:
            return _error(404, "Not found", "The requested resource could not be found.")
        return web.json_response(model)

    async def _create_model(self, request: web.Request) -> web.Response:
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        body = await request.json()
        owner, name = body.get("owner", ""), body.get("name", "")
        if not owner or not name or body.get("visibility") not in ("public", "private"):
            return _error(422, "Invalid input", "owner, name, visibility and hardware are required")
        if owner != self.tokens[token]:
            return _error(403, "Forbidden", "You cannot create models for that owner")
        key = f"{owner}/{name}"
        if key in self.models:
            return _error(409, "Conflict", "A model with that name and owner already exists.")
        self.models[key] = self._model(owner, name, None)
        return web.json_response(self.models[key], status=201)

    # -- files ------------------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and getattr(part, "name", None) != "content":
            part = await reader.next()
        if part is None or not isinstance(part, aiohttp.BodyPartReader):
            return _error(400, "Bad request", "the multipart field `content` is required")
        data = bytes(await part.read())
        fid = new_id()
        name = part.filename or "file"
        ctype = part.headers.get("Content-Type", "application/octet-stream")
        self.files[fid] = (name, ctype, data, token)
        return web.json_response(self._file_obj(fid), status=201)

    def _file_obj(self, fid: str) -> dict[str, Any]:
        name, ctype, data, _ = self.files[fid]
        return {
            "id": fid,
            "name": name,
            "content_type": ctype,
            "size": len(data),
            "etag": hashlib.md5(data).hexdigest(),
            "checksums": {
                "sha256": hashlib.sha256(data).hexdigest(),
                "md5": hashlib.md5(data).hexdigest(),
            },
            "metadata": {},
            "created_at": _now(),
            "expires_at": None,
            "urls": {"get": f"{self.url}/v1/files/{fid}"},
        }

    async def _file(self, request: web.Request) -> web.Response:
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        fid = request.match_info["id"]
        if fid not in self.files or self.files[fid][3] != token:
            return _error(404, "Not found", "The requested resource could not be found.")
        return web.json_response(self._file_obj(fid))

    async def _file_download(self, request: web.Request) -> web.Response:
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        fid = request.match_info["id"]
        if fid not in self.files or self.files[fid][3] != token:
            return _error(404, "Not found", "The requested resource could not be found.")
        _, ctype, data, _ = self.files[fid]
        return web.Response(body=data, content_type=ctype)

    def _file_of_url(self, url: str, token: str) -> bytes | None:
        prefix = f"{self.url}/v1/files/"
        if not url.startswith(prefix):
            return None
        fid = url.removeprefix(prefix).split("/")[0]
        entry = self.files.get(fid)
        return entry[2] if entry is not None and entry[3] == token else None

    async def _delivery(self, request: web.Request) -> web.Response:
        self.delivery_auth.append(request.headers.get("Authorization", ""))
        found = self.outputs.get(request.match_info["path"])
        if found is None:
            return web.Response(status=404, text="Not Found")
        data, ctype = found
        return web.Response(body=data, content_type=ctype)

    # -- trainings --------------------------------------------------------------------------
    async def _create_training(self, request: web.Request) -> web.Response:
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        m = request.match_info
        model = self.models.get(f"{m['owner']}/{m['name']}")
        latest = (model or {}).get("latest_version") or {}
        if model is None or latest.get("id") != m["version"]:
            return _error(404, "Not found", "The requested model version could not be found.")
        body = await request.json()
        destination = body.get("destination", "")
        inp = body.get("input") or {}
        if destination not in self.models:
            return _error(404, "Not found", "The specified training destination does not exist")
        if destination.split("/")[0] != self.tokens[token]:
            return _error(403, "Forbidden", "You do not have permission to train to that model")
        archive = self._file_of_url(str(inp.get("input_images", "")), token)
        if archive is None:
            return _error(422, "Invalid input", "input_images: a zip file URL is required")
        try:
            with zipfile.ZipFile(io.BytesIO(archive)) as z:
                names = sorted(z.namelist())
        except zipfile.BadZipFile:
            return _error(422, "Invalid input", "input_images is not a zip file")
        if not inp.get("trigger_word"):
            return _error(422, "Invalid input", "trigger_word is required")
        tid = new_id()
        self.training_zips[tid] = names
        training = {
            "id": tid,
            "model": f"{m['owner']}/{m['name']}",
            "version": m["version"],
            "destination": destination,
            "input": inp,
            **self._new_run("trainings", tid),
        }
        self.trainings[tid] = training
        self._owner[tid] = token
        self._spawn(
            self._drive_training(training, body.get("webhook"), body.get("webhook_events_filter"))
        )
        if self.lose_create_answers > 0 and request.transport is not None:
            self.lose_create_answers -= 1
            request.transport.abort()  # created, but the answer never reaches the caller
        return web.json_response(training, status=201)

    async def _list_trainings(self, request: web.Request) -> web.Response:
        """The caller's trainings, newest first, a page at a time (an opaque cursor)."""
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        mine = [t for t in reversed(self.trainings.values()) if self._owner.get(t["id"]) == token]
        try:
            start = int(base64.urlsafe_b64decode(request.query.get("cursor", "") + "==") or 0)
        except ValueError:
            return _error(400, "Bad request", "invalid cursor")

        def link(offset: int) -> str | None:
            if offset < 0 or offset >= len(mine) or offset == start:
                return None
            cursor = base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")
            return f"{self.url}/v1/trainings?cursor={cursor}"

        size = self.list_page_size
        return web.json_response(
            {
                "next": link(start + size),
                "previous": link(max(0, start - size)) if start > 0 else None,
                "results": mine[start : start + size],
            }
        )

    def _new_run(self, kind: str, rid: str) -> dict[str, Any]:
        """The fields a new training or prediction starts with (Replicate's shape)."""
        return {
            "logs": "",
            "output": None,
            "error": None,
            "status": "starting",
            "created_at": _now(),
            "started_at": None,
            "completed_at": None,
            "metrics": {},
            "urls": {
                "get": f"{self.url}/v1/{kind}/{rid}",
                "cancel": f"{self.url}/v1/{kind}/{rid}/cancel",
            },
        }

    async def _get_run(self, runs: dict[str, dict[str, Any]], request: web.Request) -> web.Response:
        """GET of a training or a prediction (same shape of answer)."""
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        run = self._mine(runs, request.match_info["id"], token)
        if run is None:
            return _error(404, "Not found", "The requested resource could not be found.")
        return web.json_response(run)

    async def _cancel_run(
        self, runs: dict[str, dict[str, Any]], request: web.Request
    ) -> web.Response:
        """Cancel of a training or a prediction: recorded; an unfinished one ends."""
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        run = self._mine(runs, request.match_info["id"], token)
        if run is None:
            return _error(404, "Not found", "The requested resource could not be found.")
        self.cancels.append(run["id"])
        if run["status"] not in ("succeeded", "failed", "canceled"):
            run["status"] = "canceled"
            run["completed_at"] = _now()
        return web.json_response(run)

    async def _drive_training(
        self, t: dict[str, Any], webhook: str | None, events: list[str] | None
    ) -> None:
        hook = (webhook, set(events or ["output", "completed"]))
        steps = int(t["input"].get("steps") or 1000)
        await asyncio.sleep(self.step_seconds)
        if t["status"] != "starting":
            return await self._send(t, hook, "completed")
        t["status"] = "processing"
        t["started_at"] = _now()
        t["logs"] = "Preparing dataset...\n"
        await self._send(t, hook, "start")
        for fraction in (0.25, 0.5, 0.75):
            await asyncio.sleep(self.step_seconds)
            if t["status"] != "processing":
                return await self._send(t, hook, "completed")
            done = int(steps * fraction)
            bar = "█" * int(fraction * 10)
            t["logs"] += (
                f"flux_train_replicate: {int(fraction * 100):3d}%|{bar:<10}| {done}/{steps}"
                f" [00:{done % 60:02d}<00:30, 1.5it/s, lr: 4e-04 loss: 3.1e-01]\n"
            )
            await self._send(t, hook, "logs")
        await self._hold(t)
        await asyncio.sleep(self.step_seconds)
        if t["status"] != "processing":
            return await self._send(t, hook, "completed")
        if self.fail_trainings:
            t["status"] = "failed"
            t["error"] = self.fail_trainings
        else:
            version = hashlib.sha256(t["id"].encode()).hexdigest()
            path = f"{t['id']}/trained_model.tar"
            self.outputs[path] = (weights_tar(t["id"]), "application/x-tar")
            dest = self.models[t["destination"]]
            dest["latest_version"] = {"id": version, "created_at": _now()}
            t["status"] = "succeeded"
            t["output"] = {
                "version": f"{t['destination']}:{version}",
                "weights": f"{self.url}/delivery/{path}",
            }
            t["logs"] += f"flux_train_replicate: 100%|██████████| {steps}/{steps}\n"
        t["completed_at"] = _now()
        t["metrics"] = {"predict_time": 4 * self.step_seconds}
        await self._send(t, hook, "completed")

    # -- predictions ------------------------------------------------------------------------
    def _known_version(self, version: str) -> str | None:
        """The model of a version id or `owner/name:id`, if one has it."""
        ref, _, vid = version.rpartition(":")
        for key, model in self.models.items():
            latest = model.get("latest_version") or {}
            if latest.get("id") == (vid or version) and (not ref or ref == key):
                return key
        versions = {
            t["output"]["version"]
            for t in self.trainings.values()
            if t["status"] == "succeeded" and t.get("output")
        }
        if version in versions:
            return ref
        return None

    async def _create_prediction(self, request: web.Request) -> web.Response:
        token = self._caller(request)
        if isinstance(token, web.Response):
            return token
        body = await request.json()
        version = str(body.get("version", ""))
        model = self._known_version(version)
        if model is None:
            return _error(422, "Invalid version or not permitted", "version does not exist")
        inp = body.get("input") or {}
        if not inp.get("prompt"):
            return _error(422, "Input validation failed", "prompt is required")
        ratio = inp.get("aspect_ratio", "1:1")
        if ratio not in ASPECT_SIZES:
            return _error(
                422, "Input validation failed", f"aspect_ratio must be one of {list(ASPECT_SIZES)}"
            )
        pid = new_id()
        prediction = {
            "id": pid,
            "model": model,
            "version": version.rpartition(":")[2],
            "input": inp,
            "data_removed": False,
            **self._new_run("predictions", pid),
        }
        self.predictions[pid] = prediction
        self._owner[pid] = token
        self._spawn(
            self._drive_prediction(
                prediction, body.get("webhook"), body.get("webhook_events_filter")
            )
        )
        return web.json_response(prediction, status=201)

    async def _drive_prediction(
        self, p: dict[str, Any], webhook: str | None, events: list[str] | None
    ) -> None:
        hook = (webhook, set(events or ["output", "completed"]))
        inp = p["input"]
        n = max(1, min(4, int(inp.get("num_outputs") or 1)))
        width, height = ASPECT_SIZES[inp.get("aspect_ratio", "1:1")]
        await asyncio.sleep(self.step_seconds)
        if p["status"] != "starting":
            return await self._send(p, hook, "completed")
        p["status"] = "processing"
        p["started_at"] = _now()
        p["output"] = []
        await self._send(p, hook, "start")
        seed = int(inp.get("seed") or 0)
        for i in range(n):
            await asyncio.sleep(self.step_seconds)
            await self._hold(p)
            if p["status"] != "processing":
                return await self._send(p, hook, "completed")
            if self.fail_predictions:
                break
            p["logs"] += f"{int((i + 1) / n * 100):3d}%|{'█' * (i + 1)}| {i + 1}/{n}\n"
            rgb = ((seed + 40 * i) % 256, (seed * 7) % 256, (90 + 30 * i) % 256)
            path = f"{p['id']}/out-{i}.png"
            self.outputs[path] = (png(width, height, rgb), "image/png")
            p["output"].append(f"{self.url}/delivery/{path}")
            await self._send(p, hook, "output")
        if self.fail_predictions:
            p["status"] = "failed"
            p["error"] = self.fail_predictions
        else:
            p["status"] = "succeeded"
        p["completed_at"] = _now()
        p["metrics"] = {"predict_time": n * self.step_seconds}
        await self._send(p, hook, "completed")

    # -- webhooks ---------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, obj: dict[str, Any], hook: tuple[str | None, set[str]], event: str
    ) -> None:
        url, events = hook
        if not url or event not in events or self.drop_webhooks or self._http is None:
            return
        body = json.dumps(obj)
        msg_id = "msg_" + secrets.token_urlsafe(18)
        headers = self.signed_headers(msg_id, int(time.time()), body)
        status = 0
        try:
            async with self._http.post(url, data=body.encode(), headers=headers) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.deliveries.append(Delivery(url, headers, body, status))
