"""Commands of datasets, training jobs, models and clones."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.progress import TaskID

from aivera.chat.v1 import chat_pb2
from aivera.training.v1 import clones_pb2, datasets_pb2, jobs_pb2
from client.cli.base import JsonOpt, run
from client.cli.chat import transfer_progress, upload_with_progress
from client.cli.render import (
    JobView,
    enum_name,
    err,
    out,
    print_json,
    print_json_line,
    size,
    table,
    ts,
)
from client.messages import t
from client.sdk import AsyncClient

dataset_app = typer.Typer(help="Датасеты / datasets.", no_args_is_help=True)
train_app = typer.Typer(help="Обучение LoRA / training jobs.", no_args_is_help=True)
model_app = typer.Typer(help="Обученные модели / trained models.", no_args_is_help=True)
clone_app = typer.Typer(help="Клоны / clones.", no_args_is_help=True)

TERMINAL = {
    jobs_pb2.JOB_STATUS_SUCCEEDED,
    jobs_pb2.JOB_STATUS_FAILED,
    jobs_pb2.JOB_STATUS_CANCELLED,
}
METHODS = {"lora": jobs_pb2.TRAINING_METHOD_LORA, "qlora": jobs_pb2.TRAINING_METHOD_QLORA}
EXECUTORS = {"peft": jobs_pb2.EXECUTOR_PEFT, "simulate": jobs_pb2.EXECUTOR_SIMULATE}


def _status(job: jobs_pb2.TrainingJob) -> str:
    return enum_name(jobs_pb2.JobStatus, job.status, "JOB_STATUS_")


# ---- datasets -------------------------------------------------------------------------


async def wait_dataset(c: AsyncClient, dataset_id: str, poll: float = 0.5) -> datasets_pb2.Dataset:
    ds = await c.get_dataset(dataset_id)
    while ds.status == datasets_pb2.DATASET_STATUS_VALIDATING:
        await asyncio.sleep(poll)
        ds = await c.get_dataset(dataset_id)
    return ds


def show_dataset(ds: datasets_pb2.Dataset) -> None:
    status = enum_name(datasets_pb2.DatasetStatus, ds.status, "DATASET_STATUS_")
    out.print(f"{ds.name} ({ds.id}) — {status}", style="bold", markup=False)
    if ds.status == datasets_pb2.DATASET_STATUS_READY:
        s = ds.stats
        out.print(
            t(
                "dataset.stats",
                examples=s.example_count,
                tokens=s.total_tokens,
                trained=s.trained_tokens,
                mean=f"{s.mean_tokens:.0f}",
                max=s.max_tokens,
                over=s.examples_over_max_length,
            ),
            markup=False,
        )
    for e in ds.errors:
        err.print(
            t("dataset.error_line", line=e.line, message=e.message), style="red", markup=False
        )
    if ds.error_count > len(ds.errors):
        err.print(t("dataset.more_errors", n=ds.error_count - len(ds.errors)), style="red")


@dataset_app.command("upload")
def dataset_upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str, typer.Option("--name")] = "",
    base_model: Annotated[str, typer.Option("--base-model")] = "",
    max_seq_length: Annotated[int, typer.Option("--max-seq-length", min=0)] = 0,
    json_: bool = JsonOpt,
) -> None:
    """Загрузить JSONL и дождаться проверки; ошибки с номерами строк / upload a dataset."""

    async def go(c: AsyncClient) -> int:
        file_id = await upload_with_progress(c, path, "datasets")
        ds = await c.create_dataset(
            name or path.stem, file_id, base_model=base_model, max_seq_length=max_seq_length
        )
        with err.status(t("dataset.validating")):
            ds = await wait_dataset(c, ds.id)
        if json_:
            print_json(ds)
        else:
            show_dataset(ds)
        return 0 if ds.status == datasets_pb2.DATASET_STATUS_READY else 1

    run(go)


@dataset_app.command("list")
def dataset_list(json_: bool = JsonOpt) -> None:
    """Датасеты / datasets."""

    async def go(c: AsyncClient) -> None:
        items = await c.list_datasets()
        if json_:
            print_json(items)
            return
        rows = [
            (
                d.id,
                d.name,
                enum_name(datasets_pb2.DatasetStatus, d.status, "DATASET_STATUS_"),
                d.stats.example_count,
                size(d.size_bytes),
            )
            for d in items
        ]
        out.print(
            table(["id", t("col.name"), t("col.status"), t("col.examples"), t("col.size")], rows)
        )

    run(go)


@dataset_app.command("show")
def dataset_show(dataset_id: str, json_: bool = JsonOpt) -> None:
    """Датасет: статистика и ошибки / a dataset."""

    async def go(c: AsyncClient) -> None:
        ds = await c.get_dataset(dataset_id)
        if json_:
            print_json(ds)
        else:
            show_dataset(ds)

    run(go)


# ---- jobs -----------------------------------------------------------------------------


async def watch(c: AsyncClient, job_id: str, *, as_json: bool = False) -> int:
    """Follow a job to its end; reattach (WatchJob after_sequence) after a drop."""
    view = JobView(job_id, live=out.is_terminal and not as_json, echo=not as_json)
    job = await c.get_job(job_id)
    view.seed(job)
    if job.status in TERMINAL and not as_json:
        view.final = job
    else:

        def reconnecting(attempt: int, last: int) -> None:
            view.note = t("train.reconnecting", attempt=attempt, seq=last)
            if not view.live:
                err.print(view.note, style="yellow", markup=False)

        async def apply(ev: jobs_pb2.JobEvent) -> None:
            view.apply(ev)
            # A job watched from creation learns its step count only once queued (the
            # dataset is planned then): fetch it, so progress reads "3/40", not "3/3".
            if ev.HasField("status_changed") and not view.total:
                view.total = int((await c.get_job(job_id)).progress.steps.total)

        events = c.watch_job_resilient(job_id, on_reconnect=reconnecting)
        if as_json:
            async for ev in events:
                await apply(ev)
                print_json_line(ev)
        elif view.live:
            with Live(view.renderable(), console=out, refresh_per_second=8) as live:
                async for ev in events:
                    view.note = ""
                    await apply(ev)
                    live.update(view.renderable())
        else:
            async for ev in events:
                await apply(ev)
    final = view.final or job
    if not as_json:
        out.print(t("train.finished", status=_status(final), summary=view.summary()), markup=False)
        if view.losses:
            from client.cli.render import sparkline

            out.print("loss " + sparkline(view.losses), markup=False)
        if final.error.message:
            err.print(final.error.message, style="red", markup=False)
        if final.model_id:
            out.print(t("train.model", id=final.model_id), markup=False)
    return 0 if final.status == jobs_pb2.JOB_STATUS_SUCCEEDED else 1


@train_app.command("start")
def train_start(
    dataset: Annotated[str, typer.Option("--dataset", help="id датасета / dataset id")],
    name: Annotated[str, typer.Option("--name")] = "",
    base_model: Annotated[str, typer.Option("--base-model")] = "",
    method: Annotated[str | None, typer.Option("--method", help="lora | qlora")] = None,
    executor: Annotated[
        str | None, typer.Option("--executor", help="peft | simulate (по умолчанию — сервера)")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1)] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1)] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr")] = None,
    rank: Annotated[int | None, typer.Option("--rank", min=1)] = None,
    clone: Annotated[str, typer.Option("--clone", help="Обучать для клона / for a clone.")] = "",
    watch_: Annotated[bool, typer.Option("--watch", help="Сразу следить / then watch it.")] = False,
    json_: bool = JsonOpt,
) -> None:
    """Запустить обучение / start a training job."""
    if method is not None and method not in METHODS:
        raise typer.BadParameter("lora | qlora", param_hint="--method")
    if executor is not None and executor not in EXECUTORS:
        raise typer.BadParameter("peft | simulate", param_hint="--executor")
    hp = jobs_pb2.Hyperparameters()
    if epochs is not None:
        hp.epochs = epochs
    if max_steps is not None:
        hp.max_steps = max_steps
    if learning_rate is not None:
        hp.learning_rate = learning_rate
    if rank is not None:
        hp.lora_rank = rank
    request = jobs_pb2.CreateJobRequest(
        name=name,
        dataset_id=dataset,
        base_model=base_model,
        method=METHODS[method] if method else jobs_pb2.TRAINING_METHOD_UNSPECIFIED,
        hyperparameters=hp,
        executor=EXECUTORS[executor] if executor else jobs_pb2.EXECUTOR_UNSPECIFIED,
        clone_id=clone,
    )

    async def go(c: AsyncClient) -> int:
        job = await c.create_job(request)
        if json_:
            print_json(job)
        else:
            out.print(t("train.started", id=job.id, status=_status(job)), markup=False)
        if watch_:
            return await watch(c, job.id, as_json=json_)
        return 0

    run(go)


@train_app.command("watch")
def train_watch(
    job_id: str,
    json_: Annotated[
        bool, typer.Option("--json", help="События JSON построчно / JSON lines.")
    ] = False,
) -> None:
    """Следить: шаг, loss, токены/с, ETA, график loss; переподключается сам / watch a job."""
    run(
        lambda c: watch(c, job_id, as_json=json_),
        on_interrupt=lambda: err.print(t("train.watch_stopped"), style="yellow"),
    )


@train_app.command("list")
def train_list(json_: bool = JsonOpt) -> None:
    """Задания обучения / training jobs."""

    async def go(c: AsyncClient) -> None:
        jobs = await c.list_jobs()
        if json_:
            print_json(jobs)
            return
        rows = []
        for j in jobs:
            p = j.progress
            steps = f"{p.steps.done}/{p.steps.total}" if p.steps.total else ""
            rows.append(
                (
                    j.id,
                    j.name,
                    _status(j),
                    steps,
                    f"{p.loss:.4f}" if p.loss else "",
                    ts(j.create_time),
                )
            )
        out.print(
            table(
                ["id", t("col.name"), t("col.status"), t("train.step"), "loss", t("col.created")],
                rows,
            )
        )

    run(go)


@train_app.command("show")
def train_show(job_id: str, json_: bool = JsonOpt) -> None:
    """Задание обучения / a training job."""

    async def go(c: AsyncClient) -> None:
        job = await c.get_job(job_id)
        if json_:
            print_json(job)
            return
        view = JobView(job_id, live=False)
        view.seed(job)
        out.print(f"{job.name} ({job.id}) — {_status(job)}", style="bold", markup=False)
        out.print(view.summary(), markup=False)
        if job.error.message:
            err.print(job.error.message, style="red", markup=False)

    run(go)


@train_app.command("cancel")
def train_cancel(job_id: str) -> None:
    """Отменить / cancel a job."""

    async def go(c: AsyncClient) -> None:
        job = await c.cancel_job(job_id)
        out.print(t("train.status_now", id=job.id, status=_status(job)), markup=False)

    run(go)


@train_app.command("retry")
def train_retry(job_id: str) -> None:
    """Повторить неудавшееся / retry a failed job."""

    async def go(c: AsyncClient) -> None:
        job = await c.retry_job(job_id)
        out.print(t("train.status_now", id=job.id, status=_status(job)), markup=False)

    run(go)


# ---- models ---------------------------------------------------------------------------


@model_app.command("list")
def model_list(json_: bool = JsonOpt) -> None:
    """Обученные адаптеры / trained adapters."""

    async def go(c: AsyncClient) -> None:
        models = await c.list_models()
        if json_:
            print_json(models)
            return
        rows = [
            (
                m.id,
                m.name,
                m.base_model,
                m.steps,
                f"{m.final_loss:.4f}",
                size(m.size_bytes),
                ts(m.create_time),
            )
            for m in models
        ]
        out.print(
            table(
                [
                    "id",
                    t("col.name"),
                    t("col.base_model"),
                    t("col.steps"),
                    "loss",
                    t("col.size"),
                    t("col.created"),
                ],
                rows,
            )
        )

    run(go)


@model_app.command("download")
def model_download(
    model_id: str, dest: Annotated[Path, typer.Argument(file_okay=False)] = Path(".")
) -> None:
    """Скачать файлы адаптера в папку / download an adapter's files."""

    async def go(c: AsyncClient) -> None:
        m = await c.get_model(model_id)
        folder = dest / (m.name or m.id)
        folder.mkdir(parents=True, exist_ok=True)
        with transfer_progress() as bar:
            for mf in m.files:
                task = bar.add_task(mf.name, total=mf.size_bytes)
                target = folder / mf.name
                target.parent.mkdir(parents=True, exist_ok=True)

                def advance(done: int, task: TaskID = task) -> None:
                    bar.update(task, completed=done)

                await c.download(mf.file_id, target, progress=advance)
        out.print(t("model.downloaded", path=str(folder)), markup=False)

    run(go)


# ---- clones ---------------------------------------------------------------------------


@clone_app.command("create")
def clone_create(
    name: str,
    persona: Annotated[
        str, typer.Option("--persona", help="Описание личности / persona prompt.")
    ] = "",
    base_model: Annotated[str, typer.Option("--base-model")] = "",
    json_: bool = JsonOpt,
) -> None:
    """Создать клона / create a clone."""

    async def go(c: AsyncClient) -> None:
        clone = await c.create_clone(name, persona=persona, base_model=base_model)
        if json_:
            print_json(clone)
        else:
            out.print(t("clone.created", name=clone.name, id=clone.id), markup=False)

    run(go)


@clone_app.command("list")
def clone_list(json_: bool = JsonOpt) -> None:
    """Клоны / clones."""

    async def go(c: AsyncClient) -> None:
        clones = await c.list_clones()
        if json_:
            print_json(clones)
            return
        rows = [
            (
                x.id,
                x.name,
                enum_name(clones_pb2.CloneStatus, x.status, "CLONE_STATUS_"),
                x.base_model,
                x.active_model_id,
            )
            for x in clones
        ]
        out.print(
            table(["id", t("col.name"), t("col.status"), t("col.base_model"), t("col.model")], rows)
        )

    run(go)


@clone_app.command("chat")
def clone_chat(
    clone_id: str, title: Annotated[str, typer.Argument()] = "", json_: bool = JsonOpt
) -> None:
    """Начать чат с клоном (становится активным) / start a chat with a clone."""

    async def go(c: AsyncClient) -> None:
        clone = await c.get_clone(clone_id)
        chat: chat_pb2.Chat = await c.create_chat(title or clone.name, clone_id=clone.id)
        c.set_active_chat(chat.id)
        if json_:
            print_json(chat)
        else:
            out.print(t("chat.created", title=chat.title, id=chat.id), markup=False)
            out.print(t("clone.chat_hint"), style="dim")

    run(go)
