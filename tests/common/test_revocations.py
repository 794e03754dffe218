"""The revocation feed's pure logic: which tokens it refuses, what it forgets, and that an
unreachable auth keeps what was known."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence

import pytest

from services.common.errors import Unauthenticated, reason_name
from services.common.revocations import RevocationFeed, Revoked

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Feed:
    """A scripted auth: answers each poll with the next batch, or raises."""

    def __init__(self, batches: list[Sequence[Revoked] | Exception]) -> None:
        self.batches = batches
        self.asked: list[dt.datetime | None] = []
        self.now = T0
        self.exhausted = asyncio.Event()

    async def __call__(self, since: dt.datetime | None) -> tuple[Sequence[Revoked], dt.datetime]:
        self.asked.append(since)
        batch = self.batches.pop(0)
        if not self.batches:
            self.exhausted.set()
        if isinstance(batch, Exception):
            raise batch
        self.now += dt.timedelta(seconds=2)
        return batch, self.now


async def test_tokens_below_the_epoch_are_refused_and_others_pass() -> None:
    fetch = Feed([[Revoked("a", 2, T0)]])
    feed = RevocationFeed(fetch)
    feed.check("a", 0)  # nothing known yet
    await feed.poll_once()
    with pytest.raises(Unauthenticated) as err:
        feed.check("a", 1)
    assert reason_name(err.value.reason) == "SESSION_REVOKED"
    feed.check("a", 2)  # issued after the revocation
    feed.check("b", 0)  # another user


async def test_polls_continue_from_the_previous_answer_and_keep_the_highest_epoch() -> None:
    fetch = Feed([[Revoked("a", 3, T0)], [Revoked("a", 2, T0)]])
    feed = RevocationFeed(fetch)
    await feed.poll_once()
    await feed.poll_once()  # an overlapping, older row must not lower the epoch
    assert fetch.asked == [None, T0 + dt.timedelta(seconds=2)]
    with pytest.raises(Unauthenticated):
        feed.check("a", 2)


async def test_old_revocations_are_forgotten() -> None:
    fetch = Feed([[Revoked("a", 1, T0)], []])
    feed = RevocationFeed(fetch, keep_seconds=3)
    await feed.poll_once()
    with pytest.raises(Unauthenticated):
        feed.check("a", 0)
    await feed.poll_once()  # 4 s later: every token issued before it has expired
    feed.check("a", 0)


async def test_an_unreachable_auth_keeps_what_was_known() -> None:
    fetch = Feed([[Revoked("a", 1, T0)], ConnectionError("down"), [Revoked("b", 1, T0)]])
    feed = RevocationFeed(fetch, poll_seconds=0.01)
    task = asyncio.create_task(feed.run())
    await fetch.exhausted.wait()
    await asyncio.sleep(0)  # let the last answer be applied
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for user in ("a", "b"):
        with pytest.raises(Unauthenticated):
            feed.check(user, 0)
