"""The internal service credential.

Services of the mesh call each other with a shared secret (`AIVERA_INTERNAL_TOKEN`, a
Kubernetes Secret mounted only into mesh pods) in the `x-aivera-internal-token` metadata,
optionally with `x-aivera-on-behalf-of: <user id>` to act for a user (background work that
outlives a user's access token). Gateways strip both headers from outside requests and
never route ACCESS_INTERNAL services; NetworkPolicies keep service ports inside the mesh.
A shared secret rather than auth-signed service JWTs keeps every service but auth free of
signing keys, which is the point of the JWKS design.
"""

from __future__ import annotations

import hmac

INTERNAL_TOKEN_HEADER = "x-aivera-internal-token"
ON_BEHALF_OF_HEADER = "x-aivera-on-behalf-of"
REQUEST_ID_HEADER = "x-request-id"
AUTHORIZATION_HEADER = "authorization"

# Headers a gateway must remove from requests coming from outside the mesh.
HEADERS_STRIPPED_AT_EDGE = (INTERNAL_TOKEN_HEADER, ON_BEHALF_OF_HEADER)


def internal_token_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison; an unset expected token never matches."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
