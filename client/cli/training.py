"""Commands of datasets, training jobs, models and clones."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.progress import TaskID

from aivera.chat.v1 import chat_pb2
from aivera.training.v1 import (
    clones_pb2,
    datasets_pb2,
    jobs_pb2,
    notifications_pb2,
    webhooks_pb2,
)
from client.cli.base import JsonOpt, run
from client.cli.chat import transfer_progress, upload_with_progress
from client.cli.render import (
    JobView,
    duration,
    enum_name,
    err,
    money,
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
    description: Annotated[str, typer.Option("--description")] = "",
    json_: bool = JsonOpt,
) -> None:
    """Загрузить JSONL или JSON-массив и дождаться проверки; ошибки с номерами строк /
    upload a dataset (JSON Lines or a JSON array)."""

    async def go(c: AsyncClient) -> int:
        file_id = await upload_with_progress(c, path, "datasets")
        ds = await c.create_dataset(
            name or path.stem,
            file_id,
            base_model=base_model,
            max_seq_length=max_seq_length,
            description=description,
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


def _job_request(
    *,
    dataset: str,
    name: str,
    base_model: str,
    method: str | None,
    executor: str | None,
    epochs: int | None,
    max_steps: int | None,
    learning_rate: float | None,
    rank: int | None,
    clone: str,
    hardware: str,
) -> jobs_pb2.CreateJobRequest:
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
    return jobs_pb2.CreateJobRequest(
        name=name,
        dataset_id=dataset,
        base_model=base_model,
        method=METHODS[method] if method else jobs_pb2.TRAINING_METHOD_UNSPECIFIED,
        hyperparameters=hp,
        executor=EXECUTORS[executor] if executor else jobs_pb2.EXECUTOR_UNSPECIFIED,
        clone_id=clone,
        hardware_class=hardware,
    )


DatasetOpt = Annotated[str, typer.Option("--dataset", help="id датасета / dataset id")]
NameOpt = Annotated[str, typer.Option("--name")]
BaseModelOpt = Annotated[str, typer.Option("--base-model")]
MethodOpt = Annotated[str | None, typer.Option("--method", help="lora | qlora")]
ExecutorOpt = Annotated[
    str | None, typer.Option("--executor", help="peft | simulate (по умолчанию — сервера)")
]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", min=1)]
StepsOpt = Annotated[int | None, typer.Option("--max-steps", min=1)]
LrOpt = Annotated[float | None, typer.Option("--lr")]
RankOpt = Annotated[int | None, typer.Option("--rank", min=1)]
CloneOpt = Annotated[str, typer.Option("--clone", help="Обучать для клона / for a clone.")]
HardwareOpt = Annotated[
    str, typer.Option("--hardware", help="Класс оборудования / hardware class (train hardware).")
]


@train_app.command("start")
def train_start(
    dataset: DatasetOpt,
    name: NameOpt = "",
    base_model: BaseModelOpt = "",
    method: MethodOpt = None,
    executor: ExecutorOpt = None,
    epochs: EpochsOpt = None,
    max_steps: StepsOpt = None,
    learning_rate: LrOpt = None,
    rank: RankOpt = None,
    clone: CloneOpt = "",
    hardware: HardwareOpt = "",
    from_model: Annotated[
        str, typer.Option("--from-model", help="Продолжить модель / continue a model.")
    ] = "",
    watch_: Annotated[bool, typer.Option("--watch", help="Сразу следить / then watch it.")] = False,
    json_: bool = JsonOpt,
) -> None:
    """Запустить обучение / start a training job."""
    request = _job_request(
        dataset=dataset,
        name=name,
        base_model=base_model,
        method=method,
        executor=executor,
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        rank=rank,
        clone=clone,
        hardware=hardware,
    )
    request.init_model_id = from_model

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


@train_app.command("estimate")
def train_estimate(
    dataset: DatasetOpt,
    base_model: BaseModelOpt = "",
    method: MethodOpt = None,
    executor: ExecutorOpt = None,
    epochs: EpochsOpt = None,
    max_steps: StepsOpt = None,
    learning_rate: LrOpt = None,
    rank: RankOpt = None,
    clone: CloneOpt = "",
    hardware: HardwareOpt = "",
    json_: bool = JsonOpt,
) -> None:
    """Оценить задание до запуска / estimate a job before starting it."""
    request = _job_request(
        dataset=dataset,
        name="",
        base_model=base_model,
        method=method,
        executor=executor,
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        rank=rank,
        clone=clone,
        hardware=hardware,
    )

    async def go(c: AsyncClient) -> None:
        e = await c.estimate_job(request)
        if json_:
            print_json(e)
            return
        rows = [
            (t("estimate.hardware"), e.hardware_class),
            (t("estimate.tokens"), f"{e.tokens_per_epoch} ({e.trained_tokens_per_epoch})"),
            (t("estimate.steps"), f"{e.total_steps} ({e.steps_per_epoch} / epoch)"),
            (t("estimate.time"), duration(e.expected_seconds)),
            (t("estimate.cost"), money(e.expected_cost_micros, e.currency_code)),
            (
                t("estimate.memory"),
                f"{size(e.memory_required_bytes)} / {size(e.memory_available_bytes)}"
                + ("" if e.fits_in_memory else " ✗"),
            ),
        ]
        out.print(table(["", ""], rows, header=False))
        if not e.fits_in_memory:
            err.print(t("estimate.no_fit"), style="yellow")
        if not e.within_quota:
            err.print(t("estimate.over_quota", why=e.quota_message), style="yellow", markup=False)

    run(go)


@train_app.command("base-models")
def train_base_models(json_: bool = JsonOpt) -> None:
    """Базовые модели / base models this server trains."""

    async def go(c: AsyncClient) -> None:
        models = await c.list_base_models()
        if json_:
            print_json(models)
            return
        rows = []
        for m in models:
            need = {
                (r.method, r.max_seq_length): r.min_gpu_memory_bytes for r in m.memory_requirements
            }
            lora = need.get((jobs_pb2.TRAINING_METHOD_LORA, 2048))
            qlora = need.get((jobs_pb2.TRAINING_METHOD_QLORA, 2048))
            rows.append(
                (
                    m.name + (" *" if m.is_default else ""),
                    m.family,
                    f"{m.parameter_count / 1e9:.2f}B",
                    m.context_length,
                    m.license,
                    size(lora) if lora else "",
                    size(qlora) if qlora else "",
                    "✓" if m.served_locally else "",
                )
            )
        out.print(
            table(
                [
                    t("col.name"),
                    t("col.family"),
                    t("col.parameters"),
                    t("col.context"),
                    t("col.license"),
                    "LoRA 2k",
                    "QLoRA 2k",
                    t("col.local"),
                ],
                rows,
            )
        )

    run(go)


@train_app.command("hardware")
def train_hardware(json_: bool = JsonOpt) -> None:
    """Классы оборудования и цены / hardware classes and prices."""

    async def go(c: AsyncClient) -> None:
        classes = await c.list_hardware_classes()
        if json_:
            print_json(classes)
            return
        rows = [
            (
                h.name + (" *" if h.is_default else ""),
                h.device_type,
                size(h.memory_bytes),
                money(h.hourly_rate_micros, h.currency_code) + " / h",
            )
            for h in classes
        ]
        out.print(table([t("col.name"), t("col.type"), t("col.memory"), t("col.price")], rows))

    run(go)


@train_app.command("quota")
def train_quota(json_: bool = JsonOpt) -> None:
    """Квота и расход за месяц / quota and this month's usage."""

    async def go(c: AsyncClient) -> None:
        q = await c.get_quota()
        if json_:
            print_json(q)
            return
        hours = f"{q.gpu_hours_used:.2f} / " + (
            f"{q.gpu_hours_per_month:g}" if q.gpu_hours_per_month else "∞"
        )
        budget = (
            money(q.spent_micros, q.currency_code)
            + " / "
            + (money(q.monthly_budget_micros, q.currency_code) if q.monthly_budget_micros else "∞")
        )
        rows = [
            (t("quota.month"), q.month),
            (t("quota.jobs"), f"{q.active_jobs} / {q.max_active_jobs}"),
            (t("quota.gpu_hours"), hours),
            (t("quota.budget"), budget),
        ]
        out.print(table(["", ""], rows, header=False))

    run(go)


@train_app.command("costs")
def train_costs(json_: bool = JsonOpt) -> None:
    """Расходы по месяцам / costs by month."""

    async def go(c: AsyncClient) -> None:
        months = await c.list_cost_summaries()
        if json_:
            print_json(months)
            return
        rows = [
            (
                m.month,
                money(m.amount_micros, m.currency_code),
                f"{m.gpu_hours:.2f}",
                m.job_count,
                ", ".join(i.device_type for i in m.items),
            )
            for m in months
        ]
        out.print(
            table(
                [
                    t("quota.month"),
                    t("col.amount"),
                    t("quota.gpu_hours"),
                    t("col.jobs"),
                    t("col.type"),
                ],
                rows,
            )
        )

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
def train_retry(
    job_id: str,
    learning_rate: LrOpt = None,
    max_steps: StepsOpt = None,
    epochs: EpochsOpt = None,
) -> None:
    """Повторить неудавшееся; с новыми параметрами — заново с шага 0 / retry a failed job;
    with changed hyperparameters it starts over."""
    hp = jobs_pb2.Hyperparameters()
    if learning_rate is not None:
        hp.learning_rate = learning_rate
    if max_steps is not None:
        hp.max_steps = max_steps
    if epochs is not None:
        hp.epochs = epochs

    async def go(c: AsyncClient) -> None:
        job = await c.retry_job(job_id, hp if hp.ListFields() else None)
        out.print(t("train.status_now", id=job.id, status=_status(job)), markup=False)

    run(go)


@dataset_app.command("update")
def dataset_update(
    dataset_id: str,
    name: Annotated[str | None, typer.Option("--name")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    json_: bool = JsonOpt,
) -> None:
    """Переименовать или описать датасет / rename or describe a dataset."""
    if name is None and description is None:
        raise typer.BadParameter("--name | --description")

    async def go(c: AsyncClient) -> None:
        ds = await c.update_dataset(dataset_id, name=name, description=description)
        if json_:
            print_json(ds)
        else:
            show_dataset(ds)

    run(go)


@model_app.command("rename")
def model_rename(model_id: str, name: str) -> None:
    """Переименовать модель / rename a model."""

    async def go(c: AsyncClient) -> None:
        m = await c.rename_model(model_id, name)
        out.print(t("model.renamed", id=m.id, name=m.name), markup=False)

    run(go)


@model_app.command("delete")
def model_delete(model_id: str) -> None:
    """Удалить модель (клоны с ней вернутся к базовой) / delete a model."""

    async def go(c: AsyncClient) -> None:
        await c.delete_model(model_id)
        out.print(t("model.deleted", id=model_id), markup=False)

    run(go)


@model_app.command("promote")
def model_promote(
    job_id: str,
    step: Annotated[int | None, typer.Option("--step", help="шаг контрольной точки / step")] = None,
    name: Annotated[str, typer.Option("--name")] = "",
    json_: bool = JsonOpt,
) -> None:
    """Модель из контрольной точки (по умолчанию последней) / a model from a checkpoint."""

    async def go(c: AsyncClient) -> int:
        points = await c.list_checkpoints(job_id)
        chosen = [p for p in points if step is None or p.step == step]
        if not chosen:
            err.print(t("model.no_checkpoint"), style="red")
            return 4
        m = await c.promote_checkpoint(job_id, chosen[-1].id, name)
        if json_:
            print_json(m)
        else:
            out.print(t("model.promoted", id=m.id, name=m.name), markup=False)
        return 0

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


# ---- notifications and webhooks ---------------------------------------------------------

notification_app = typer.Typer(
    help="Уведомления об обучении / training notifications.", no_args_is_help=True
)
webhook_app = typer.Typer(help="Вебхуки / outbound webhooks.", no_args_is_help=True)

KINDS = {
    "job.succeeded": notifications_pb2.NOTIFICATION_KIND_JOB_SUCCEEDED,
    "job.failed": notifications_pb2.NOTIFICATION_KIND_JOB_FAILED,
    "job.cancelled": notifications_pb2.NOTIFICATION_KIND_JOB_CANCELLED,
    "dataset.ready": notifications_pb2.NOTIFICATION_KIND_DATASET_READY,
    "dataset.failed": notifications_pb2.NOTIFICATION_KIND_DATASET_FAILED,
    "model.deleted": notifications_pb2.NOTIFICATION_KIND_MODEL_DELETED,
}
KIND_NAMES = {v: k for k, v in KINDS.items()}


def _note_row(n: notifications_pb2.Notification) -> tuple[str, ...]:
    about = n.job_id or n.dataset_id or n.model_id
    return (
        "" if n.read else "●",
        ts(n.create_time),
        KIND_NAMES.get(n.kind, ""),
        n.title,
        n.body,
        about,
    )


@notification_app.command("list")
def notifications_list(
    unread: Annotated[
        bool, typer.Option("--unread", help="Только непрочитанные / unread only.")
    ] = False,
    json_: bool = JsonOpt,
) -> None:
    """Уведомления / notifications, newest first."""

    async def go(c: AsyncClient) -> None:
        notes = await c.list_notifications(unread_only=unread)
        if json_:
            print_json(notes)
            return
        out.print(
            table(
                ["", t("col.created"), t("col.type"), t("col.title"), "", "id"],
                [_note_row(n) for n in notes],
            )
        )

    run(go)


@notification_app.command("read")
def notifications_read(
    ids: Annotated[list[str] | None, typer.Argument(help="id; без них — все / none: all")] = None,
) -> None:
    """Отметить прочитанными / mark read."""

    async def go(c: AsyncClient) -> None:
        n = await c.mark_read(list(ids) if ids else None)
        out.print(t("notes.marked", n=n), markup=False)

    run(go)


@notification_app.command("watch")
def notifications_watch(json_: bool = JsonOpt) -> None:
    """Следить за новыми уведомлениями / follow new notifications (Ctrl-C stops)."""

    async def go(c: AsyncClient) -> None:
        async for ev in c.watch_notifications(include_unread=True):
            if not ev.HasField("notification"):
                continue
            if json_:
                print_json_line(ev.notification)
            else:
                out.print(" · ".join(_note_row(ev.notification)[1:5]), markup=False)

    run(go)


def _webhook_row(w: webhooks_pb2.Webhook) -> tuple[str, ...]:
    kinds = ", ".join(KIND_NAMES.get(k, "") for k in w.event_kinds) or "*"
    return (w.id, w.url, kinds, "…" + w.secret_hint, w.description)


@webhook_app.command("create")
def webhooks_create(
    url: str,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="job.failed, dataset.ready, …; без них — все / none: all"),
    ] = None,
    description: Annotated[str, typer.Option("--description")] = "",
    json_: bool = JsonOpt,
) -> None:
    """Создать вебхук; секрет показывается один раз / create; the secret is shown once."""
    unknown = [e for e in event or [] if e not in KINDS]
    if unknown:
        raise typer.BadParameter(", ".join(KINDS), param_hint="--event")
    kinds: list[int] = [int(KINDS[e]) for e in event or []]

    async def go(c: AsyncClient) -> None:
        made = await c.create_webhook(url, event_kinds=kinds, description=description)
        if json_:
            print_json(made)
            return
        out.print(t("webhook.created", id=made.webhook.id), markup=False)
        out.print(t("webhook.secret", secret=made.secret), markup=False)

    run(go)


@webhook_app.command("list")
def webhooks_list(json_: bool = JsonOpt) -> None:
    """Вебхуки / webhooks."""

    async def go(c: AsyncClient) -> None:
        hooks = await c.list_webhooks()
        if json_:
            print_json(hooks)
            return
        out.print(
            table(
                ["id", "URL", t("col.events"), t("col.secret"), t("col.description")],
                [_webhook_row(w) for w in hooks],
            )
        )

    run(go)


@webhook_app.command("delete")
def webhooks_delete(webhook_id: str) -> None:
    """Удалить вебхук / delete a webhook."""

    async def go(c: AsyncClient) -> None:
        await c.delete_webhook(webhook_id)
        out.print(t("webhook.deleted", id=webhook_id), markup=False)

    run(go)


@webhook_app.command("rotate")
def webhooks_rotate(webhook_id: str, json_: bool = JsonOpt) -> None:
    """Новый секрет (старый действует ещё 24 ч) / new secret (the old one signs 24 h more)."""

    async def go(c: AsyncClient) -> None:
        made = await c.rotate_webhook_secret(webhook_id)
        if json_:
            print_json(made)
            return
        out.print(t("webhook.secret", secret=made.secret), markup=False)

    run(go)


@webhook_app.command("deliveries")
def webhooks_deliveries(webhook_id: str, json_: bool = JsonOpt) -> None:
    """Журнал доставок / the delivery log."""

    async def go(c: AsyncClient) -> None:
        items = await c.list_webhook_deliveries(webhook_id)
        if json_:
            print_json(items)
            return
        rows = [
            (
                ts(d.create_time),
                d.event_type,
                enum_name(webhooks_pb2.DeliveryStatus, d.status, "DELIVERY_STATUS_"),
                " ".join(str(a.response_code or "—") for a in d.attempts),
                d.id,
            )
            for d in items
        ]
        out.print(
            table([t("col.created"), t("col.type"), t("col.status"), t("col.codes"), "id"], rows)
        )

    run(go)
