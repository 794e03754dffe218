"""Datasets as a product: `.json` files holding an array of records (line numbers point at
the record), a description, rename, and deleting a dataset a queued job uses (IN_USE). No
worker runs here: jobs stay QUEUED once validated."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import field_mask_pb2

from aivera.training.v1 import datasets_pb2 as D
from aivera.training.v1 import jobs_pb2 as J
from services.training import data
from tests.helpers.errors import bad_field, reason
from tests.training.conftest import MEMO, Env, User, jsonl

Mask = field_mask_pb2.FieldMask


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value


def test_json_array_records_keep_their_line_numbers() -> None:
    text = '[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "", "completion": "c"},\n'
    text += '  {"prompt": "d",\n   "completion": "e"}\n]\n'
    parsed = data.parse_jsonl(text.encode())
    assert parsed.format == D.DATASET_FORMAT_PROMPT_COMPLETION
    assert [e.line for e in parsed.examples] == [2, 4]
    assert parsed.errors == [(3, "'prompt' must be a non-empty string")]
    broken = data.parse_jsonl(b'[{"prompt": "a", "completion": "b"}\n {"prompt": "x"}]')
    assert broken.errors and broken.errors[0][0] == 2 and "expected ','" in broken.errors[0][1]
    assert data.parse_jsonl(b"[]").errors == [(0, "the file has no records")]
    tail = data.parse_jsonl(b'[{"prompt": "a", "completion": "b"}] junk')
    assert tail.errors == [(1, "unexpected content after the array")]
    # JSON Lines still read line by line.
    assert len(data.parse_jsonl(jsonl(MEMO)).examples) == len(MEMO)


async def test_json_array_file_becomes_a_ready_dataset(env: Env) -> None:
    u = User(env)
    as_lines = await u.dataset(MEMO)
    file_id = await u.upload(json.dumps(MEMO, indent=2).encode(), filename="memo.json")
    ds = await u.datasets.CreateDataset(
        D.CreateDatasetRequest(name="array", file_id=file_id, base_model=env.tiny), metadata=u.md
    )
    ds = await u.wait_dataset(ds.id)
    assert ds.status == D.DATASET_STATUS_READY and ds.format == D.DATASET_FORMAT_CHAT
    assert ds.stats == as_lines.stats
    bad = [*MEMO[:2], {"messages": [{"role": "bot", "content": "x"}]}]
    file_id = await u.upload(json.dumps(bad, indent=1).encode(), filename="bad.json")
    ds = await u.datasets.CreateDataset(
        D.CreateDatasetRequest(name="bad", file_id=file_id, base_model=env.tiny), metadata=u.md
    )
    ds = await u.wait_dataset(ds.id)
    assert ds.status == D.DATASET_STATUS_ERROR
    (problem,) = ds.errors
    text = json.dumps(bad, indent=1)
    start = text.index('{\n  "messages": [\n   {\n    "role": "bot"')
    assert problem.line == text.count("\n", 0, start) + 1 and "unknown role" in problem.message
    # The job trains on an array dataset like on JSON Lines.
    ok = await u.datasets.CreateDataset(
        D.CreateDatasetRequest(
            name="again",
            file_id=await u.upload(json.dumps(MEMO).encode(), filename="m.json"),
            base_model=env.tiny,
        ),
        metadata=u.md,
    )
    ok = await u.wait_dataset(ok.id)
    job = await u.job(ok.id, hp=J.Hyperparameters(max_steps=2))
    queued = await u.wait_job(job.id, (J.JOB_STATUS_QUEUED, J.JOB_STATUS_FAILED))
    assert queued.status == J.JOB_STATUS_QUEUED
    await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)


async def test_description_and_rename(env: Env) -> None:
    u = User(env)
    file_id = await u.upload(jsonl(MEMO))
    ds = await u.datasets.CreateDataset(
        D.CreateDatasetRequest(
            name="facts", file_id=file_id, base_model=env.tiny, description="Six facts."
        ),
        metadata=u.md,
    )
    assert ds.description == "Six facts."
    both = await u.datasets.UpdateDataset(
        D.UpdateDatasetRequest(
            dataset=D.Dataset(id=ds.id, name="colours", description="Colours of things."),
            update_mask=Mask(paths=["name", "description"]),
        ),
        metadata=u.md,
    )
    assert both.name == "colours" and both.description == "Colours of things."
    only = await u.datasets.UpdateDataset(
        D.UpdateDatasetRequest(
            dataset=D.Dataset(id=ds.id, name="ignored", description=""),
            update_mask=Mask(paths=["description"]),
        ),
        metadata=u.md,
    )
    assert only.name == "colours" and only.description == ""
    got = await u.datasets.GetDataset(D.GetDatasetRequest(id=ds.id), metadata=u.md)
    assert got.name == "colours"
    bad: list[tuple[D.UpdateDatasetRequest, str]] = [
        (D.UpdateDatasetRequest(dataset=D.Dataset(id=ds.id, name="x")), "update_mask"),
        (
            D.UpdateDatasetRequest(
                dataset=D.Dataset(id=ds.id), update_mask=Mask(paths=["base_model"])
            ),
            "update_mask",
        ),
        (
            D.UpdateDatasetRequest(dataset=D.Dataset(id=ds.id), update_mask=Mask(paths=["name"])),
            "dataset.name",
        ),
        (
            D.UpdateDatasetRequest(
                dataset=D.Dataset(id=ds.id, description="d" * 2001),
                update_mask=Mask(paths=["description"]),
            ),
            "dataset.description",
        ),
    ]
    for req, field in bad:
        err = await refused(u.datasets.UpdateDataset(req, metadata=u.md))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_field(err) == field
    err = await refused(
        u.datasets.CreateDataset(
            D.CreateDatasetRequest(name="n", file_id=file_id, description="d" * 2001),
            metadata=u.md,
        )
    )
    assert bad_field(err) == "description"
    other = User(env)
    err = await refused(
        other.datasets.UpdateDataset(
            D.UpdateDatasetRequest(
                dataset=D.Dataset(id=ds.id, name="mine"), update_mask=Mask(paths=["name"])
            ),
            metadata=other.md,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_deleting_a_dataset_a_queued_job_uses(env: Env) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    job = await u.job(ds.id, hp=J.Hyperparameters(max_steps=2))
    await u.wait_job(job.id, (J.JOB_STATUS_QUEUED,))
    err = await refused(u.datasets.DeleteDataset(D.DeleteDatasetRequest(id=ds.id), metadata=u.md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(err) == "IN_USE"
    await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)
    await u.datasets.DeleteDataset(D.DeleteDatasetRequest(id=ds.id), metadata=u.md)
    err = await refused(
        u.datasets.UpdateDataset(
            D.UpdateDatasetRequest(
                dataset=D.Dataset(id=ds.id, name="x"), update_mask=Mask(paths=["name"])
            ),
            metadata=u.md,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await refused(u.job(ds.id))
    assert err.code() == grpc.StatusCode.NOT_FOUND
