"""A small async client of Replicate's HTTP API (https://replicate.com/docs/reference/http):
file uploads, trainings, predictions, models and downloads of their outputs.

Failures come back as the mesh's errors so callers branch on reasons, never on HTTP:
unreachable, timeouts and 5xx → Unavailable (PROVIDER_UNAVAILABLE); 401/403 →
FailedPrecondition (PROVIDER_KEY_INVALID); 429 → ResourceExhausted (PROVIDER_RATE_LIMITED);
404 → NotFound; 400/422 → InvalidArgument; 409 → AlreadyExists. A message carries
Replicate's `detail` (what was wrong with the request), never the token: the token goes
only in the Authorization header, only to the API's own origin (output files live on
other hosts and need none), and is scrubbed from any text Replicate echoes back.
"""

from __future__ import annotations

import json as jsonlib
import re
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)

# Events a webhook is sent for (Replicate's `webhook_events_filter`).
WEBHOOK_EVENTS = ["start", "output", "logs", "completed"]
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
# How much of Replicate's error text a message keeps.
_DETAIL_CHARS = 300
# Identifiers that go into URL paths: owner/name and version ids, training ids.
_MAX_REDIRECTS = 5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Replicate:
    """One API token's view of Replicate. Open one per token (a user's or the system's)
    and close it; the HTTP session is made on first use, inside the running loop."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(self.base_url)
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the token
        return f"Replicate({self.base_url!r})"

    async def __aenter__(self) -> Replicate:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- files ------------------------------------------------------------------------------
    async def upload_file(self, name: str, data: bytes, content_type: str) -> str:
        """Upload `data` (multipart field `content`) and return the file's URL, to pass as
        a model input."""
        form = aiohttp.FormData()
        form.add_field("content", data, filename=name, content_type=content_type)
        reply = await self._call("POST", "/v1/files", data=form)
        url = (reply.get("urls") or {}).get("get")
        if not isinstance(url, str) or not url:
            raise Unavailable(
                "Replicate answered the file upload without a URL",
                reason=Reason.PROVIDER_UNAVAILABLE,
            )
        return url

    # -- models -----------------------------------------------------------------------------
    async def account(self) -> dict[str, Any]:
        """The token's account (`username` is the owner of models it creates)."""
        return await self._call("GET", "/v1/account")

    async def get_model(self, model: str) -> dict[str, Any]:
        """A model (`latest_version.id` is its newest version)."""
        owner, name = _model(model)
        return await self._call("GET", f"/v1/models/{owner}/{name}")

    async def create_model(
        self, model: str, *, visibility: str = "private", hardware: str = "cpu"
    ) -> dict[str, Any]:
        """Create `owner/name` (a training's destination must exist); AlreadyExists when
        it does."""
        owner, name = _model(model)
        body = {"owner": owner, "name": name, "visibility": visibility, "hardware": hardware}
        return await self._call("POST", "/v1/models", json=body)

    # -- trainings --------------------------------------------------------------------------
    async def create_training(
        self,
        *,
        model: str,
        version: str,
        destination: str,
        input: dict[str, Any],
        webhook: str | None,
    ) -> dict[str, Any]:
        owner, name = _model(model)
        body: dict[str, Any] = {"destination": destination, "input": input}
        if webhook:
            body["webhook"] = webhook
            body["webhook_events_filter"] = WEBHOOK_EVENTS
        path = f"/v1/models/{owner}/{name}/versions/{_ident(version)}/trainings"
        return await self._call("POST", path, json=body)

    async def list_trainings(self, page: str | None = None) -> dict[str, Any]:
        """One page of the account's trainings, newest first: `{"next", "previous",
        "results"}`; pass a page's `next` for the one after it. A `next` off the API's own
        origin is refused (the token goes nowhere else)."""
        if page is None:
            return await self._call("GET", "/v1/trainings")
        parts = urlsplit(page)
        path = parts.path.removeprefix(urlsplit(self.base_url).path)
        if _origin(page) != self._origin or not path.startswith("/v1/trainings"):
            raise Unavailable(
                "Replicate named a next page off its API", reason=Reason.PROVIDER_UNAVAILABLE
            )
        return await self._call("GET", path + (f"?{parts.query}" if parts.query else ""))

    async def get_training(self, training_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/trainings/{_ident(training_id)}")

    async def cancel_training(self, training_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/v1/trainings/{_ident(training_id)}/cancel")

    # -- predictions ------------------------------------------------------------------------
    async def create_prediction(
        self, *, version: str, input: dict[str, Any], webhook: str | None = None
    ) -> dict[str, Any]:
        """`version` is a version id or `owner/name:version` (what a training's output
        `version` names)."""
        body: dict[str, Any] = {"version": version, "input": input}
        if webhook:
            body["webhook"] = webhook
            body["webhook_events_filter"] = WEBHOOK_EVENTS
        return await self._call("POST", "/v1/predictions", json=body)

    async def get_prediction(self, prediction_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/predictions/{_ident(prediction_id)}")

    async def cancel_prediction(self, prediction_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/v1/predictions/{_ident(prediction_id)}/cancel")

    # -- outputs ----------------------------------------------------------------------------
    async def download(self, url: str, *, max_bytes: int) -> bytes:
        """An output file, read in chunks and refused past `max_bytes`
        (ResourceExhausted, FILE_TOO_LARGE). Only http(s) URLs. The token is sent only to
        the API's own origin (Files API URLs), never to the hosts outputs live on:
        redirects are followed here, hop by hop, so it never rides one to another host."""
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.netloc:
                    raise InvalidArgument("Replicate named an output that is not an http(s) URL")
                headers = self._auth() if _origin(url) == self._origin else {}
                async with self._http().get(url, headers=headers, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status >= 300:
                        raise _status_error(resp.status, await _detail(resp), self._token)
                    if resp.content_length is not None and resp.content_length > max_bytes:
                        raise _too_large(max_bytes)
                    buf = bytearray()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        buf += chunk
                        if len(buf) > max_bytes:
                            raise _too_large(max_bytes)
                    return bytes(buf)
        except ServiceError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(exc) from None
        raise Unavailable(
            "Replicate's output redirected too many times", reason=Reason.PROVIDER_UNAVAILABLE
        )

    # -- plumbing ---------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def _call(
        self, method: str, path: str, *, json: Any = None, data: Any = None
    ) -> dict[str, Any]:
        try:
            async with self._http().request(
                method, self.base_url + path, json=json, data=data, headers=self._auth()
            ) as resp:
                if resp.status >= 300:
                    raise _status_error(resp.status, await _detail(resp), self._token)
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
        except ServiceError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(exc) from None
        if not isinstance(body, dict):
            raise Unavailable(
                f"Replicate answered {method} {path.split('?')[0]} with no JSON object",
                reason=Reason.PROVIDER_UNAVAILABLE,
            )
        return body


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _model(model: str) -> tuple[str, str]:
    owner, _, name = model.partition("/")
    if not _NAME.fullmatch(owner) or not _NAME.fullmatch(name):
        raise InvalidArgument(f"{model!r} is not a Replicate model name (owner/name)")
    return owner, name


def _ident(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise InvalidArgument("not a Replicate id")
    return quote(value, safe="")


async def _detail(resp: aiohttp.ClientResponse) -> str:
    """Replicate's error text (`detail`, or `title`), short."""
    try:
        raw = await resp.content.read(16 * 1024)
    except (aiohttp.ClientError, TimeoutError):
        return ""
    text = raw.decode("utf-8", "replace")
    try:
        body = jsonlib.loads(text)
    except ValueError:
        return text.strip()[:_DETAIL_CHARS]
    if isinstance(body, dict):
        for key in ("detail", "title", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])[:_DETAIL_CHARS]
    return ""


def _status_error(status: int, detail: str, token: str) -> ServiceError:
    if token:
        detail = detail.replace(token, "[redacted]")
    said = f": {detail}" if detail else ""
    if status in (401, 403):
        return FailedPrecondition(
            f"Replicate refused the API token (HTTP {status}){said}",
            reason=Reason.PROVIDER_KEY_INVALID,
            metadata={"provider": "replicate"},
        )
    if status == 429:
        return ResourceExhausted(
            f"Replicate's rate limit was hit (HTTP 429){said}",
            reason=Reason.PROVIDER_RATE_LIMITED,
            metadata={"provider": "replicate"},
        )
    if status == 404:
        return NotFound(f"Replicate has no such resource (HTTP 404){said}")
    if status == 409:
        return AlreadyExists(f"Replicate: already exists (HTTP 409){said}")
    if status in (400, 413, 422):
        return InvalidArgument(f"Replicate refused the request (HTTP {status}){said}")
    if 400 <= status < 500:
        return FailedPrecondition(f"Replicate refused the request (HTTP {status}){said}")
    return Unavailable(
        f"Replicate is unavailable (HTTP {status}){said}",
        reason=Reason.PROVIDER_UNAVAILABLE,
        metadata={"provider": "replicate"},
    )


def _unreachable(exc: BaseException) -> Unavailable:
    # The exception's text can name the URL, never headers: the type is enough.
    return Unavailable(
        f"Replicate is unreachable ({type(exc).__name__})",
        reason=Reason.PROVIDER_UNAVAILABLE,
        metadata={"provider": "replicate"},
    )


def _too_large(limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"Replicate's output is larger than the limit of {limit} bytes",
        reason=Reason.FILE_TOO_LARGE,
        metadata={"limit": str(limit)},
    )
