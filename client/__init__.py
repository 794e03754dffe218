"""Python SDK and CLI of the Aivera mesh.

`AsyncClient` (asyncio) and `Client` (blocking) wrap the generated gRPC stubs: they find the
services (one gateway address, or one address per service), keep the session in the user's
credentials file and refresh the access token on their own. `aivera` is the CLI
(`client.cli:app`).
"""

from client.config import Endpoints
from client.credentials import Credentials, CredentialStore
from client.errors import (
    AiveraError,
    AuthRequired,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from client.sdk import AsyncClient
from client.sync import Client

__all__ = [
    "AiveraError",
    "AsyncClient",
    "AuthRequired",
    "Client",
    "CredentialStore",
    "Credentials",
    "Endpoints",
    "NotFound",
    "PermissionDenied",
    "Unavailable",
]
