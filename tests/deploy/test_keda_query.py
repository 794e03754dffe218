"""The KEDA scaler's queue-depth query runs against the training schema as migrated, and
counts exactly the queued and running statuses of the contract."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import yaml

from aivera.training.v1 import jobs_pb2
from services.common import migrations

ROOT = Path(__file__).resolve().parents[2]


def _query() -> str:
    text = (ROOT / "deploy/k8s/components/keda/scaledobject.yaml").read_text()
    (doc,) = [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "ScaledObject"]
    (trigger,) = [t for t in doc["spec"]["triggers"] if t["type"] == "postgresql"]
    return str(trigger["metadata"]["query"])


def test_query_counts_queued_and_running_statuses() -> None:
    found = re.search(r"status IN \(([^)]*)\)", _query())
    assert found is not None
    statuses = {int(n) for n in found[1].split(",")}
    assert statuses == {jobs_pb2.JOB_STATUS_QUEUED, jobs_pb2.JOB_STATUS_RUNNING}


async def test_query_runs_against_the_migrated_training_schema(database_url: str) -> None:
    await migrations.migrate(database_url, "training", ROOT / "services/training/migrations")
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval(_query()) == 0
    finally:
        await conn.close()
