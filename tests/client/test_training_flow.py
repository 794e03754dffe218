"""The CLI's training flow against the real auth, storage and training services and an
in-process training worker (the `simulate` executor) and the real RAG service for clone
knowledge bases: dataset upload with validation and line-numbered errors, start → watch →
list, cancel → retry, clones, model list and download."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.client.conftest import Cli
from tests.client.mesh import TrainMesh, signed_in_cli, start_train_mesh
from tests.helpers.tiny import build_tiny_model


@pytest.fixture(scope="module")
async def train_mesh(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TrainMesh]:
    tiny = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")
    async with start_train_mesh(
        database_url, tmp_path_factory.mktemp("mesh"), allowed_base_models=[str(tiny)]
    ) as mesh:
        yield mesh


async def signed_in(m: TrainMesh, tmp_path: Path) -> Cli:
    return await signed_in_cli(m, tmp_path / "cfg")


def jsonl(records: list[object]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def chat(q: str, a: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


async def test_dataset_upload_reports_errors_with_line_numbers(
    train_mesh: TrainMesh, tmp_path: Path
) -> None:
    cli = await signed_in(train_mesh, tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        jsonl([chat("a", "b")]) + '{"messages": [}\n' + jsonl([{"messages": [{"role": "bot"}]}])
    )
    r = await cli("dataset", "upload", str(bad))
    assert r.exit_code == 1, r.output
    assert "строка 2:" in r.stderr
    r = await cli("dataset", "upload", str(bad), "--json", AIVERA_LANG="en")
    ds = json.loads(r.stdout)
    assert ds["status"] == "DATASET_STATUS_ERROR" and ds["errors"][0]["line"] == 2


async def test_train_start_watch_and_list(train_mesh: TrainMesh, tmp_path: Path) -> None:
    cli = await signed_in(train_mesh, tmp_path)
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl([chat(f"What is {i}?", f"It is {i}.") for i in range(8)]))
    r = await cli("dataset", "upload", str(good), "--json")
    assert r.exit_code == 0, r.output
    ds = json.loads(r.stdout)
    assert ds["status"] == "DATASET_STATUS_READY" and int(ds["stats"]["example_count"]) == 8
    r = await cli(
        "train",
        "start",
        "--dataset",
        ds["id"],
        "--executor",
        "simulate",
        "--max-steps",
        "6",
        "--json",
    )
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)
    r = await cli("train", "watch", job["id"])
    assert r.exit_code == 0, r.output
    assert "succeeded" in r.stdout and "loss " in r.stdout
    r = await cli("train", "list", "--json")
    listed = json.loads(r.stdout)
    assert [j["id"] for j in listed] == [job["id"]]
    assert listed[0]["status"] == "JOB_STATUS_SUCCEEDED"
    # Watched from creation, before the step count is known: progress still reads x/6.
    r = await cli(
        "train",
        "start",
        "--dataset",
        ds["id"],
        "--executor",
        "simulate",
        "--max-steps",
        "6",
        "--watch",
    )
    assert r.exit_code == 0, r.output
    assert "1/6" in r.output and "6/6" in r.output and "1/1" not in r.output
    r = await cli("model", "list", "--json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 2
    r = await cli("train", "show", str(uuid.uuid4()))
    assert r.exit_code == 4


async def test_cancel_retry_clone_and_model_download(train_mesh: TrainMesh, tmp_path: Path) -> None:
    cli = await signed_in(train_mesh, tmp_path)
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl([chat(f"Q{i}?", f"A{i}.") for i in range(4)]))
    ds = json.loads((await cli("dataset", "upload", str(good), "--json")).stdout)
    r = await cli("clone", "create", "Саппорт", "--persona", "Вежливый", "--json")
    assert r.exit_code == 0, r.output
    clone = json.loads(r.stdout)
    r = await cli("clone", "list", "--json")
    assert [c["id"] for c in json.loads(r.stdout)] == [clone["id"]]
    # a long job: cancel it, retry it, cancel again
    args = ("train", "start", "--dataset", ds["id"], "--executor", "simulate")
    r = await cli(*args, "--max-steps", "2000", "--json")
    job = json.loads(r.stdout)
    r = await cli("train", "cancel", job["id"])
    assert r.exit_code == 0, r.output
    for _ in range(100):
        status = json.loads((await cli("train", "show", job["id"], "--json")).stdout)["status"]
        if status == "JOB_STATUS_CANCELLED":
            break
        await asyncio.sleep(0.1)
    assert status == "JOB_STATUS_CANCELLED"
    r = await cli("train", "retry", job["id"])
    assert r.exit_code == 0, r.output
    assert json.loads((await cli("train", "show", job["id"], "--json")).stdout)["attempt"] == 2
    await cli("train", "cancel", job["id"])
    # a short one for the clone, then download its adapter
    r = await cli(*args, "--max-steps", "3", "--clone", clone["id"], "--watch")
    assert r.exit_code == 0, r.output
    models = json.loads((await cli("model", "list", "--json")).stdout)
    model = next(m for m in models if m.get("clone_id") == clone["id"])
    r = await cli("model", "download", model["id"], str(tmp_path / "dl"))
    assert r.exit_code == 0, r.output
    folder = tmp_path / "dl" / (model.get("name") or model["id"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(f["name"] for f in model["files"])


async def test_catalogue_estimate_quota_and_costs(train_mesh: TrainMesh, tmp_path: Path) -> None:
    cli = await signed_in(train_mesh, tmp_path)
    r = await cli("train", "base-models", "--json")
    assert r.exit_code == 0, r.output
    (model,) = json.loads(r.stdout)
    assert model["is_default"] and model["family"] == "llama" and model["memory_requirements"]
    r = await cli("train", "hardware", AIVERA_LANG="en")
    assert r.exit_code == 0 and "nvidia-h100" in r.stdout and "USD / h" in r.stdout
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl([chat(f"Q{i}?", f"A{i}.") for i in range(4)]))
    ds = json.loads((await cli("dataset", "upload", str(good), "--json")).stdout)
    r = await cli(
        "train", "estimate", "--dataset", ds["id"], "--epochs", "2", "--json", AIVERA_LANG="en"
    )
    assert r.exit_code == 0, r.output
    est = json.loads(r.stdout)
    assert int(est["total_steps"]) == 2 * int(est["steps_per_epoch"]) and est["fits_in_memory"]
    r = await cli("train", "estimate", "--dataset", ds["id"], "--hardware", "nvidia-h100")
    assert r.exit_code == 0 and "nvidia-h100" in r.stdout
    r = await cli("train", "estimate", "--dataset", ds["id"], "--hardware", "quantum")
    assert r.exit_code != 0
    r = await cli("train", "quota", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["max_active_jobs"] == 10
    r = await cli("train", "costs", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []


async def test_notifications_and_webhooks(train_mesh: TrainMesh, tmp_path: Path) -> None:
    from aiohttp import web

    got: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.text())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        cli = await signed_in(train_mesh, tmp_path)
        url = f"http://127.0.0.1:{port}/hook"
        r = await cli("webhooks", "create", url, "--event", "dataset.ready", AIVERA_LANG="en")
        assert r.exit_code == 0, r.output
        assert "whsec_" in r.stdout
        r = await cli("webhooks", "create", url, "--event", "nope")
        assert r.exit_code == 2
        (hook_row,) = json.loads((await cli("webhooks", "list", "--json")).stdout)
        good = tmp_path / "good.jsonl"
        good.write_text(jsonl([chat("Q?", "A.")]))
        assert (await cli("dataset", "upload", str(good), "--json")).exit_code == 0
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.1)
        assert json.loads(got[0])["type"] == "dataset.ready"
        r = await cli("webhooks", "deliveries", hook_row["id"], AIVERA_LANG="en")
        assert r.exit_code == 0 and "dataset.ready" in r.stdout and "204" in r.stdout
        r = await cli("notifications", "list", "--unread", "--json")
        (note,) = json.loads(r.stdout)
        assert note["kind"] == "NOTIFICATION_KIND_DATASET_READY"
        r = await cli("notifications", "read", AIVERA_LANG="en")
        assert r.exit_code == 0 and "Marked read: 1" in r.stdout
        assert json.loads((await cli("notifications", "list", "--unread", "--json")).stdout) == []
        r = await cli("webhooks", "rotate", hook_row["id"], AIVERA_LANG="en")
        assert r.exit_code == 0 and "whsec_" in r.stdout
        assert (await cli("webhooks", "delete", hook_row["id"])).exit_code == 0
        assert (await cli("webhooks", "delete", hook_row["id"])).exit_code == 4
    finally:
        await runner.cleanup()


async def test_json_array_dataset_and_model_management(
    train_mesh: TrainMesh, tmp_path: Path
) -> None:
    cli = await signed_in(train_mesh, tmp_path)
    array = tmp_path / "pairs.json"
    array.write_text(json.dumps([chat(f"Q{i}?", f"A{i}.") for i in range(4)], indent=2))
    r = await cli("dataset", "upload", str(array), "--description", "four pairs", "--json")
    assert r.exit_code == 0, r.output
    ds = json.loads(r.stdout)
    assert ds["status"] == "DATASET_STATUS_READY" and ds["description"] == "four pairs"
    r = await cli("dataset", "update", ds["id"], "--name", "pairs v2", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "pairs v2"
    r = await cli("train", "start", "--dataset", ds["id"], "--max-steps", "60", "--json")
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)
    assert (await cli("train", "watch", job["id"])).exit_code == 0
    r = await cli("model", "promote", job["id"], "--step", "50", "--json")
    assert r.exit_code == 0, r.output
    promoted = json.loads(r.stdout)
    assert promoted["simulated"] and promoted["steps"] == "50"
    assert (await cli("model", "promote", job["id"], "--step", "7")).exit_code == 4
    r = await cli("model", "rename", promoted["id"], "best so far", AIVERA_LANG="en")
    assert r.exit_code == 0 and "best so far" in r.stdout
    assert (await cli("model", "delete", promoted["id"])).exit_code == 0
    assert (await cli("model", "delete", promoted["id"])).exit_code == 4
    # Retry with another learning rate: a new attempt that starts over.
    r = await cli("train", "start", "--dataset", ds["id"], "--max-steps", "500", "--json")
    slow = json.loads(r.stdout)
    assert (await cli("train", "cancel", slow["id"])).exit_code == 0
    r = await cli("train", "retry", slow["id"], "--lr", "0.00005", "--max-steps", "5")
    assert r.exit_code == 0, r.output
    r = await cli("train", "show", slow["id"], "--json")
    shown = json.loads(r.stdout)
    assert shown["attempt"] == 2 and shown["hyperparameters"]["max_steps"] == 5
    assert shown["hyperparameters"]["learning_rate"] == pytest.approx(5e-5)
