"""Page tokens of training's List RPCs: keyset pages that neither repeat nor skip a row
when new ones are inserted between two pages, and tokens scoped to the RPC, the user and
the filter (anything else is INVALID_ARGUMENT with reason INVALID_PAGE_TOKEN). No worker
runs here: jobs stay QUEUED."""

from __future__ import annotations

import grpc
import pytest

from aivera.training.v1 import datasets_pb2 as D
from aivera.training.v1 import jobs_pb2 as J
from tests.helpers.errors import bad_field, reason
from tests.training.conftest import MEMO, Env, User

pytestmark = pytest.mark.asyncio


def assert_bad_token(err: grpc.aio.AioRpcError) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(err) == "INVALID_PAGE_TOKEN" and bad_field(err) == "page_token"


async def test_list_jobs_pages_stay_stable_and_tokens_are_scoped(env: Env) -> None:
    u, other = User(env), User(env)
    ds = await u.dataset(MEMO)
    first = [await u.job(ds.id) for _ in range(3)]
    page1 = await u.jobs.ListJobs(J.ListJobsRequest(page_size=2), metadata=u.md)
    assert [j.id for j in page1.jobs] == [first[2].id, first[1].id] and page1.next_page_token
    # Jobs created between two pages neither shift nor repeat what the client sees.
    later = [await u.job(ds.id) for _ in range(2)]
    page2 = await u.jobs.ListJobs(
        J.ListJobsRequest(page_size=2, page_token=page1.next_page_token), metadata=u.md
    )
    assert [j.id for j in page2.jobs] == [first[0].id] and not page2.next_page_token
    fresh = await u.jobs.ListJobs(J.ListJobsRequest(page_size=10), metadata=u.md)
    assert [j.id for j in fresh.jobs] == [j.id for j in (*reversed(later), *reversed(first))]

    token = page1.next_page_token
    cases = [
        # Another user.
        other.jobs.ListJobs(J.ListJobsRequest(page_token=token), metadata=other.md),
        # Another status filter.
        u.jobs.ListJobs(
            J.ListJobsRequest(status=J.JOB_STATUS_QUEUED, page_token=token), metadata=u.md
        ),
        # Another List RPC.
        u.datasets.ListDatasets(D.ListDatasetsRequest(page_token=token), metadata=u.md),
        # Edited.
        u.jobs.ListJobs(J.ListJobsRequest(page_token=token[:-2] + "AA"), metadata=u.md),
    ]
    for call in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert_bad_token(err.value)
    for job in (*first, *later):
        await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)


async def test_list_datasets_pages_stay_stable_with_a_filter(env: Env) -> None:
    u = User(env)
    first = [await u.dataset(MEMO) for _ in range(3)]
    ready = D.DATASET_STATUS_READY
    page1 = await u.datasets.ListDatasets(
        D.ListDatasetsRequest(page_size=2, status=ready), metadata=u.md
    )
    assert [d.id for d in page1.datasets] == [first[2].id, first[1].id]
    later = await u.dataset(MEMO)
    page2 = await u.datasets.ListDatasets(
        D.ListDatasetsRequest(page_size=2, status=ready, page_token=page1.next_page_token),
        metadata=u.md,
    )
    assert [d.id for d in page2.datasets] == [first[0].id] and not page2.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.datasets.ListDatasets(
            D.ListDatasetsRequest(page_size=2, page_token=page1.next_page_token), metadata=u.md
        )
    assert_bad_token(err.value)
    newest = await u.datasets.ListDatasets(D.ListDatasetsRequest(page_size=1), metadata=u.md)
    assert [d.id for d in newest.datasets] == [later.id]
