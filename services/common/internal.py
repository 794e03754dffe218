"""Metadata headers the mesh itself sets.

A service proves who it is with `x-aivera-service-token` (services.common.identity) and acts
for a user with a delegation in `authorization`. Gateways strip the service header from
outside requests and never route ACCESS_INTERNAL services; NetworkPolicies keep service
ports inside the mesh. `x-aivera-internal-token` and `x-aivera-on-behalf-of` (the shared
secret and bare user id this replaced) are still stripped at the edge and ignored
everywhere.
"""

from __future__ import annotations

from services.common.identity import SERVICE_TOKEN_HEADER

REQUEST_ID_HEADER = "x-request-id"
AUTHORIZATION_HEADER = "authorization"
_RETIRED_HEADERS = ("x-aivera-internal-token", "x-aivera-on-behalf-of")

# Headers a gateway must remove from requests coming from outside the mesh.
HEADERS_STRIPPED_AT_EDGE = (SERVICE_TOKEN_HEADER, *_RETIRED_HEADERS)
