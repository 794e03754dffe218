"""`aivera lora`: image LoRAs (seed 001) — a style, character or product taught from 4–15
reference images, trained (Replicate, the mesh's workers, or simulated), then called up
in prompts by its trigger word."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from aivera.training.v1 import image_loras_pb2 as L
from client.cli.base import JsonOpt, describe, run
from client.cli.chat import transfer_progress
from client.cli.render import (
    cost_text,
    enum_name,
    err,
    out,
    print_json,
    print_json_line,
    size,
    table,
    ts,
)
from client.errors import AiveraError, NotFound
from client.messages import t
from client.sdk import ASPECT_RATIOS, LORA_EXECUTORS, LORA_KINDS, AsyncClient

lora_app = typer.Typer(
    help="Image LoRA: стиль, персонаж или продукт по 4–15 референсам / image LoRAs.",
    no_args_is_help=True,
)

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

LoraArg = Annotated[
    str, typer.Argument(help="id, слово-триггер или название / id, trigger word or name")
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor", help="replicate | local | simulate (по умолчанию — сервера / server's)"
    ),
]
StepsOpt = Annotated[
    int, typer.Option("--steps", min=0, max=6000, help="Шаги; 0 — по умолчанию / 0: default")
]
WatchOpt = Annotated[
    bool, typer.Option("--watch", help="Следить до конца обучения / follow until it ends.")
]


def status_name(lora: L.ImageLora) -> str:
    return enum_name(L.ImageLoraStatus, lora.status, "IMAGE_LORA_STATUS_")


def _executor_name(value: int) -> str:
    return enum_name(L.ImageLoraExecutor, value, "IMAGE_LORA_EXECUTOR_") if value else ""


def _badge(simulated: bool) -> str:
    return f" ({t('lora.simulated')})" if simulated else ""


def _choice(value: str | None, choices: Collection[str], hint: str) -> None:
    if value is not None and value not in choices:
        raise typer.BadParameter(" | ".join(choices), param_hint=hint)


async def resolve(c: AsyncClient, ref: str) -> str:
    """An image LoRA's id from its id, trigger word (any case) or exact name."""
    if UUID.fullmatch(ref):
        return ref
    for lora in await c.list_image_loras():
        if lora.trigger_word.casefold() == ref.casefold() or lora.name == ref:
            return lora.id
    raise NotFound(t("lora.unknown", ref=ref))


def show_lora(lora: L.ImageLora) -> None:
    out.print(
        f"{lora.name} ({lora.id}) — {status_name(lora)}{_badge(lora.simulated)}",
        style="bold",
        markup=False,
    )
    rows = [
        (t("lora.kind"), enum_name(L.ImageLoraKind, lora.kind, "IMAGE_LORA_KIND_")),
        (t("lora.trigger"), lora.trigger_word),
        (t("lora.progress"), f"{lora.progress:.0%}"),
    ]
    if lora.executor:
        rows.append((t("lora.executor"), _executor_name(lora.executor)))
    if lora.attempt:
        rows.append((t("lora.attempt"), str(lora.attempt)))
    if lora.training_steps:
        rows.append((t("col.steps"), str(lora.training_steps)))
    if lora.job_id:
        rows.append((t("lora.job"), lora.job_id))
    if lora.weights_size_bytes:
        rows.append((t("lora.weights"), size(lora.weights_size_bytes)))
    rows.append((t("col.created"), ts(lora.create_time)))
    if lora.finish_time.seconds:
        rows.append((t("lora.finished"), ts(lora.finish_time)))
    out.print(table(["", ""], rows, header=False))
    if lora.error:
        err.print(lora.error, style="red", markup=False)
    n = len(lora.reference_images)
    out.print(t("lora.images", n=n), style="bold" if 4 <= n <= 15 else "yellow", markup=False)
    out.print(
        table(
            ["id", t("col.type"), t("lora.pixels"), t("col.size"), t("lora.caption")],
            [
                (
                    img.id,
                    enum_name(L.ImageFormat, img.format, "IMAGE_FORMAT_"),
                    f"{img.width}×{img.height}",
                    size(img.size_bytes),
                    img.caption,
                )
                for img in lora.reference_images
            ],
        )
    )


async def add_images(c: AsyncClient, lora_id: str, paths: list[Path], caption: str) -> int:
    """Uploads each image with a progress bar and adds it; a refused image is reported
    (the server's text) and the others still go. Returns how many were refused."""
    refused = 0
    with transfer_progress() as bar:
        for path in paths:
            task = bar.add_task(path.name, total=path.stat().st_size)

            def advance(done: int, task: TaskID = task) -> None:
                bar.update(task, completed=done)

            try:
                await c.upload_reference_image(lora_id, path, caption=caption, progress=advance)
            except AiveraError as e:
                refused += 1
                bar.update(task, description=f"{path.name} ✗")
                err.print(f"{path.name}: {describe(e)}", style="red", markup=False)
    return refused


async def follow(c: AsyncClient, lora_id: str, *, as_json: bool = False) -> int:
    """Follows training to its end (a progress bar; lines when not on a terminal);
    0 when READY."""
    last: L.ImageLora | None = None
    if as_json:
        async for lora in c.watch_image_lora(lora_id):
            print_json_line(lora)
            last = lora
    else:
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=not err.is_terminal,  # off a terminal the status lines say it all
        )
        with bar:
            task = bar.add_task("…", total=1.0)
            async for lora in c.watch_image_lora(lora_id):
                label = f"{lora.name} · {status_name(lora)}{_badge(lora.simulated)}"
                bar.update(task, completed=lora.progress, description=label)
                if not err.is_terminal and (last is None or last.status != lora.status):
                    err.print(label, markup=False)
                last = lora
    if last is None:
        return 1
    if not as_json:
        out.print(t("lora.ended", status=status_name(last)), markup=False)
        if last.status == L.IMAGE_LORA_STATUS_READY:
            out.print(t("lora.use_hint", word=last.trigger_word), style="dim", markup=False)
        if last.error:
            err.print(last.error, style="red", markup=False)
    return 0 if last.status == L.IMAGE_LORA_STATUS_READY else 1


# ---- commands -------------------------------------------------------------------------


@lora_app.command("create")
def lora_create(
    name: Annotated[str, typer.Argument(help="Название / name")],
    kind: Annotated[str, typer.Option("--kind", help="style | character | product")],
    trigger: Annotated[
        str, typer.Option("--trigger", help="Слово-триггер в промптах / trigger word")
    ],
    images: Annotated[
        list[Path] | None,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="Референсы / reference images"
        ),
    ] = None,
    caption: Annotated[str, typer.Option("--caption")] = "",
    json_: bool = JsonOpt,
) -> None:
    """Создать image LoRA (и сразу добавить референсы) / create an image LoRA."""
    _choice(kind, LORA_KINDS, "--kind")

    async def go(c: AsyncClient) -> int:
        lora = await c.create_image_lora(name, kind, trigger)
        refused = await add_images(c, lora.id, list(images or []), caption) if images else 0
        lora = await c.get_image_lora(lora.id)
        if json_:
            print_json(lora)
        else:
            out.print(t("lora.created", name=lora.name, id=lora.id), markup=False)
            out.print(t("lora.images", n=len(lora.reference_images)), markup=False)
        return 1 if refused else 0

    run(go)


@lora_app.command("list")
def lora_list(json_: bool = JsonOpt) -> None:
    """Image LoRA со статусами / your image LoRAs."""

    async def go(c: AsyncClient) -> None:
        items = await c.list_image_loras()
        if json_:
            print_json(items)
            return
        rows = [
            (
                x.id,
                x.name,
                enum_name(L.ImageLoraKind, x.kind, "IMAGE_LORA_KIND_"),
                x.trigger_word,
                status_name(x) + _badge(x.simulated),
                f"{x.progress:.0%}",
                len(x.reference_images),
                ts(x.create_time),
            )
            for x in items
        ]
        out.print(
            table(
                [
                    "id",
                    t("col.name"),
                    t("lora.kind"),
                    t("lora.trigger"),
                    t("col.status"),
                    t("lora.progress"),
                    t("lora.images_col"),
                    t("col.created"),
                ],
                rows,
            )
        )

    run(go)


@lora_app.command("show")
def lora_show(ref: LoraArg, json_: bool = JsonOpt) -> None:
    """Image LoRA: статус, референсы / an image LoRA with its reference images."""

    async def go(c: AsyncClient) -> None:
        lora = await c.get_image_lora(await resolve(c, ref))
        if json_:
            print_json(lora)
        else:
            show_lora(lora)

    run(go)


@lora_app.command("add")
def lora_add(
    ref: LoraArg,
    images: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, help="JPEG/PNG/WebP")
    ],
    caption: Annotated[str, typer.Option("--caption", help="Подпись / caption")] = "",
) -> None:
    """Загрузить референсы (4–15, до 10 МБ, 512–4096 px) / upload reference images."""

    async def go(c: AsyncClient) -> int:
        lora_id = await resolve(c, ref)
        refused = await add_images(c, lora_id, list(images), caption)
        lora = await c.get_image_lora(lora_id)
        out.print(t("lora.images", n=len(lora.reference_images)), markup=False)
        return 1 if refused else 0

    run(go)


@lora_app.command("remove")
def lora_remove(ref: LoraArg, image_id: str) -> None:
    """Убрать референс / remove a reference image."""

    async def go(c: AsyncClient) -> None:
        lora = await c.remove_reference_image(await resolve(c, ref), image_id)
        out.print(t("lora.images", n=len(lora.reference_images)), markup=False)

    run(go)


@lora_app.command("start")
def lora_start(
    ref: LoraArg,
    executor: ExecutorOpt = None,
    steps: StepsOpt = 0,
    watch: WatchOpt = False,
    json_: bool = JsonOpt,
) -> None:
    """Начать обучение / start training."""
    _choice(executor, LORA_EXECUTORS, "--executor")

    async def go(c: AsyncClient) -> int:
        lora = await c.start_image_lora(await resolve(c, ref), executor=executor, steps=steps)
        if json_ and not watch:
            print_json(lora)
        elif not json_:
            out.print(
                t(
                    "lora.started",
                    name=lora.name,
                    status=status_name(lora),
                    executor=_executor_name(lora.executor),
                    attempt=lora.attempt,
                )
                + _badge(lora.simulated),
                markup=False,
            )
        return await follow(c, lora.id, as_json=json_) if watch else 0

    run(go, on_interrupt=lambda: err.print(t("lora.watch_stopped"), style="yellow"))


# A retry is a start of a FAILED or CANCELLED LoRA (the server checks the status).
lora_app.command(
    "retry",
    help="Повторить обучение после ошибки или отмены (те же референсы) / retry a FAILED or "
    "CANCELLED training with the same images.",
)(lora_start)


@lora_app.command("watch")
def lora_watch(ref: LoraArg, json_: bool = JsonOpt) -> None:
    """Следить за обучением / follow a training until it ends."""

    async def go(c: AsyncClient) -> int:
        return await follow(c, await resolve(c, ref), as_json=json_)

    run(go, on_interrupt=lambda: err.print(t("lora.watch_stopped"), style="yellow"))


@lora_app.command("cancel")
def lora_cancel(ref: LoraArg) -> None:
    """Отменить обучение / cancel a training."""

    async def go(c: AsyncClient) -> None:
        lora = await c.cancel_image_lora(await resolve(c, ref))
        out.print(t("lora.status_now", name=lora.name, status=status_name(lora)), markup=False)

    run(go)


@lora_app.command("delete")
def lora_delete(ref: LoraArg) -> None:
    """Удалить image LoRA (изображения и веса удаляются позже) / delete an image LoRA."""

    async def go(c: AsyncClient) -> None:
        lora_id = await resolve(c, ref)
        await c.delete_image_lora(lora_id)
        out.print(t("lora.deleted", id=lora_id), markup=False)

    run(go)


@lora_app.command("generate")
def lora_generate(
    ref: LoraArg,
    prompt: Annotated[str, typer.Argument(help="Промпт / prompt")],
    scale: Annotated[
        float | None, typer.Option("--scale", min=0.0, max=2.0, help="Сила LoRA 0–2 / strength")
    ] = None,
    num: Annotated[int, typer.Option("-n", "--num", min=1, max=4, help="Изображений / images")] = 1,
    aspect: Annotated[str, typer.Option("--aspect", help=" | ".join(ASPECT_RATIOS))] = "1:1",
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", file_okay=False, help="Папка для изображений / folder")
    ] = Path("."),
    json_: Annotated[
        bool, typer.Option("--json", help="События JSON построчно / JSON lines.")
    ] = False,
) -> None:
    """Сгенерировать изображения (слово-триггер добавляется сам) и сохранить в папку /
    generate images with a READY image LoRA and save them."""
    _choice(aspect, ASPECT_RATIOS, "--aspect")

    async def go(c: AsyncClient) -> int:
        lora_id = await resolve(c, ref)
        out_dir.mkdir(parents=True, exist_ok=True)
        events = c.generate_images(
            lora_id, prompt, lora_scale=scale, num_outputs=num, aspect_ratio=aspect, seed=seed
        )
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            console=err,
            disable=json_,
            transient=not err.is_terminal,
        )
        prefix, done = "", None
        with bar:
            task = bar.add_task(t("lora.generating"), total=1.0)
            async for ev in events:
                kind = ev.WhichOneof("event")
                if json_:
                    print_json_line(ev)
                if kind == "queued":
                    prefix = ev.queued.id[:8]
                    if not json_:
                        err.print(
                            t("lora.queued", prompt=ev.queued.prompt, seed=ev.queued.seed)
                            + _badge(ev.queued.simulated),
                            markup=False,
                        )
                elif kind == "progress":
                    bar.update(task, completed=ev.progress.fraction)
                elif kind == "image":
                    img = ev.image
                    target = out_dir / f"{prefix or 'image'}-{img.index}.png"
                    await c.download(img.file_id, target)
                    if not json_:
                        out.print(
                            t("lora.saved", path=str(target), w=img.width, h=img.height),
                            markup=False,
                        )
                elif kind == "done":
                    done = ev.done
                    bar.update(task, completed=1.0)
        if done is None:
            return 1
        if not json_:
            status = enum_name(L.GenerationStatus, done.status, "GENERATION_STATUS_")
            out.print(t("lora.generation_done", status=status, n=len(done.images)), markup=False)
            if cost := cost_text(done.cost):  # LOCAL: device time billed to the user
                out.print(t("cost", cost=cost), markup=False)
            if done.error:
                err.print(done.error, style="red", markup=False)
        return 0 if done.status == L.GENERATION_STATUS_SUCCEEDED else 1

    run(go)


@lora_app.command("generations")
def lora_generations(
    ref: Annotated[str | None, typer.Argument(help="Только этой LoRA / of one LoRA")] = None,
    json_: bool = JsonOpt,
) -> None:
    """Генерации (новые первыми) / generations, newest first."""

    async def go(c: AsyncClient) -> None:
        items = await c.list_generations(await resolve(c, ref) if ref else "")
        if json_:
            print_json(items)
            return
        rows = [
            (
                g.id,
                ts(g.create_time),
                enum_name(L.GenerationStatus, g.status, "GENERATION_STATUS_") + _badge(g.simulated),
                f"{len(g.images)}/{g.num_outputs}",
                f"{g.lora_scale:g}",
                g.seed,
                cost_text(g.cost),
                g.prompt,
            )
            for g in items
        ]
        out.print(
            table(
                [
                    "id",
                    t("col.created"),
                    t("col.status"),
                    t("lora.images_col"),
                    t("lora.scale"),
                    "seed",
                    t("col.cost"),
                    t("lora.prompt"),
                ],
                rows,
            )
        )

    run(go)
