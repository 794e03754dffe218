"""The verifier's per-token cache: a verified token is remembered until its `exp`, never
past it, never once its key left the key set, and the cache stays bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from services.common.errors import Reason, Unauthenticated
from services.common.jwks import AccessClaims, JwksVerifier, _Key
from tests.helpers.tokens import Keyring, ed25519_key


def counting(
    keyring: Keyring, *, cache_size: int = 100, clock: Callable[[], float] = time.time
) -> tuple[JwksVerifier, list[int]]:
    """A verifier over `keyring` and a list that counts full (uncached) verifications."""
    verifier = JwksVerifier(
        keyring.fetch,
        issuer=keyring.issuer,
        audience=keyring.audience,
        min_refresh_seconds=0,
        cache_size=cache_size,
        clock=clock,
    )
    calls: list[int] = []
    inner = verifier._verify_uncached

    async def spy(token: str, audience: str, kind: str) -> tuple[AccessClaims, str, _Key]:
        calls.append(1)
        return await inner(token, audience, kind)

    verifier._verify_uncached = spy  # type: ignore[method-assign]
    return verifier, calls


async def test_second_check_of_a_token_is_a_cache_hit() -> None:
    keyring = Keyring()
    verifier, calls = counting(keyring)
    token = keyring.mint("u1", role="admin")
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert first == second and second.user_id == "u1" and second.role == "admin"
    assert len(calls) == 1 and verifier.cached_tokens == 1
    await verifier.verify(keyring.mint("u2"))  # another token: verified on its own
    assert len(calls) == 2 and verifier.cached_tokens == 2


async def test_expired_token_refused_even_if_cached() -> None:
    keyring = Keyring()
    verifier, calls = counting(keyring)
    token = keyring.mint("u1", ttl=1)
    exp = (await verifier.verify(token)).exp
    await verifier.verify(token)
    assert len(calls) == 1
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)  # past exp, by the real clock
    with pytest.raises(Unauthenticated) as err:
        await verifier.verify(token)
    assert err.value.reason is Reason.TOKEN_EXPIRED
    assert verifier.cached_tokens == 0  # the stale entry is gone, nothing re-cached


async def test_cache_hit_ends_at_exp_by_the_verifiers_clock() -> None:
    # The cache compares `now < exp` itself: with its clock at exp, the hit is refused
    # and the token goes through full verification again (which, by the real clock, it
    # still passes here: the point is that the cached entry was not trusted).
    keyring = Keyring()
    now = [time.time()]
    verifier, calls = counting(keyring, clock=lambda: now[0])
    token = keyring.mint("u1", ttl=600)
    exp = (await verifier.verify(token)).exp
    now[0] = exp - 0.001
    await verifier.verify(token)
    assert len(calls) == 1
    now[0] = float(exp)
    await verifier.verify(token)
    assert len(calls) == 2


async def test_token_of_a_removed_key_refused_even_if_cached() -> None:
    keyring = Keyring()
    old = keyring.keys[0]
    new = ed25519_key(kid="rotated")
    keyring.keys.insert(0, new)
    verifier, calls = counting(keyring)
    old_token, new_token = keyring.mint("u1", key=old), keyring.mint("u2", key=new)
    await verifier.verify(old_token)
    await verifier.verify(new_token)
    await verifier.refresh(force=True)  # the same key set again: cached tokens stay
    await verifier.verify(old_token)
    await verifier.verify(new_token)
    assert len(calls) == 2
    keyring.keys.remove(old)
    await verifier.refresh(force=True)
    with pytest.raises(Unauthenticated) as err:
        await verifier.verify(old_token)
    assert err.value.reason is Reason.TOKEN_INVALID
    await verifier.verify(new_token)  # the remaining key's tokens stay cached
    assert len(calls) == 3


async def test_token_of_a_replaced_key_under_the_same_kid_refused() -> None:
    keyring = Keyring()
    verifier, _calls = counting(keyring)
    token = keyring.mint("u1")
    await verifier.verify(token)
    keyring.keys[0] = ed25519_key(kid=keyring.keys[0].kid)  # new material, same kid
    await verifier.refresh(force=True)
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)


async def test_failures_are_not_cached_and_tampering_misses() -> None:
    keyring = Keyring()
    verifier, calls = counting(keyring)
    token = keyring.mint("u1")
    await verifier.verify(token)
    head, payload, sig = token.split(".")
    tampered = f"{head}.{payload}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await verifier.verify(tampered)
    assert len(calls) == 3 and verifier.cached_tokens == 1


async def test_cache_is_bounded_lru() -> None:
    keyring = Keyring()
    verifier, calls = counting(keyring, cache_size=3)
    tokens = [keyring.mint(f"u{i}") for i in range(4)]
    for t in tokens[:3]:
        await verifier.verify(t)
    await verifier.verify(tokens[0])  # most recently used now: tokens[1] is the oldest
    await verifier.verify(tokens[3])
    assert verifier.cached_tokens == 3 and len(calls) == 4
    await verifier.verify(tokens[0])
    await verifier.verify(tokens[2])
    assert len(calls) == 4  # still cached
    await verifier.verify(tokens[1])  # was evicted
    assert len(calls) == 5 and verifier.cached_tokens == 3


async def test_cache_holds_no_token() -> None:
    keyring = Keyring()
    verifier = keyring.verifier()
    token = keyring.mint("u1")
    await verifier.verify(token)
    # SHA-256 of the token, then the audience it was checked for.
    assert all(isinstance(k, bytes) and k[32:] == b"aivera" for k in verifier._cache)
    assert not any(token.encode() in k for k in verifier._cache)


async def test_a_cached_token_never_passes_as_another_kind() -> None:
    keyring = Keyring()
    verifier = keyring.verifier()
    access = keyring.mint("u1")
    await verifier.verify(access)
    with pytest.raises(Unauthenticated):
        await verifier.verify_service(access)
    with pytest.raises(Unauthenticated):
        await verifier.verify_delegation(access, service="chat")
    service = keyring.mint_service("chat")
    assert await verifier.verify_service(service) == "chat"
    with pytest.raises(Unauthenticated):
        await verifier.verify(service)
    delegation = keyring.mint_delegation("u1", audience="rag", actor="chat")
    claims = await verifier.verify_delegation(delegation, service="rag")
    assert claims.user_id == "u1" and claims.service == "chat"
    wrongs: tuple[Callable[[], Awaitable[AccessClaims]], ...] = (
        lambda: verifier.verify(delegation),
        lambda: verifier.verify_delegation(delegation, service="storage"),
    )
    for wrong in wrongs:
        with pytest.raises(Unauthenticated):
            await wrong()
