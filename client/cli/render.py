"""Output helpers of the CLI: JSON for scripts, tables, sparklines, durations, and the live
views of a chat turn and a training job."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage
from rich.console import Console, Group, RenderableType
from rich.markdown import Markdown
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from aivera.chat.v1 import chat_pb2
from aivera.training.v1 import jobs_pb2
from client.messages import t

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SPARKS = "▁▂▃▄▅▆▇█"


def to_dict(msg: ProtoMessage) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def print_json(data: Any) -> None:
    if isinstance(data, ProtoMessage):
        data = to_dict(data)
    elif isinstance(data, list):
        data = [to_dict(x) if isinstance(x, ProtoMessage) else x for x in data]
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def print_json_line(data: Any) -> None:
    if isinstance(data, ProtoMessage):
        data = to_dict(data)
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, header: bool = True) -> Table:
    tab = Table(show_header=header, header_style="bold", box=None, pad_edge=False)
    for c in columns:
        tab.add_column(c)
    for row in rows:
        tab.add_row(*("" if v is None else str(v) for v in row))
    return tab


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """The last `width` values as block characters, scaled between their min and max."""
    vals = [v for v in values if v == v][-width:]  # drop NaN
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        return SPARKS[len(SPARKS) // 2] * len(vals)
    scale = (len(SPARKS) - 1) / (hi - lo)
    return "".join(SPARKS[round((v - lo) * scale)] for v in vals)


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def money(micros: int, currency: str) -> str:
    return f"{micros / 1e6:.2f} {currency}"


def cost_text(cost: jobs_pb2.CostSummary) -> str:
    """What a job or a LOCAL image generation cost, with its device time: "" when nothing
    was billed (simulated, or paid to the provider)."""
    if not cost.items:
        return ""
    devices = ", ".join(
        f"{item.device_type} {duration(item.device_seconds)}" for item in cost.items
    )
    return f"{money(cost.amount_micros, cost.currency_code)} ({devices})"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def ts(value: Any) -> str:
    if not value.seconds:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(value.seconds))


def enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


# ---- a chat turn ----------------------------------------------------------------------


def _box(box: Any) -> str:
    n = box.normalized
    if not (n.right or n.bottom):
        return ""
    return f"[{n.left:.2f}, {n.top:.2f} – {n.right:.2f}, {n.bottom:.2f}]"


def source_lines(
    message: chat_pb2.Message, *, expand: bool, urls: dict[str, str] | None = None
) -> list[str]:
    """The numbered source list under an answer: each cited search result by its marker
    `[n]` (document, page, block); expanded, also the block's box and text and the
    images the turn produced with their signed URLs (`urls` by file id). An answer that
    cites nothing but used search results says how many (all of them when expanded)."""
    lines: list[str] = []
    results = list(message.search_results)
    shown = [(c.marker, results[c.search_result_index]) for c in message.citations]
    if not shown and expand:
        shown = [(n, r) for n, r in enumerate(results, start=1)]
    if shown:
        lines.append(t("chat.sources"))
    for marker, ref in shown:
        parts = [ref.filename or ref.document_id or "—"]
        if ref.page:
            parts.append(t("chat.source_page", page=ref.page))
        parts.append(t("chat.source_block", block=ref.block_id))
        line = f" [{marker}] " + ", ".join(parts)
        if expand:
            box = _box(ref.box)
            if box:
                line += f" {box}"
        lines.append(line)
        if expand and ref.text.strip():
            text = " ".join(ref.text.split())
            lines.append("      «" + (text[:200] + "…" if len(text) > 200 else text) + "»")
    if not shown and results:
        lines.append(t("chat.sources_used", n=len(results)))
    if expand and message.images:
        lines.append(t("chat.images"))
        for img in message.images:
            kind = enum_name(chat_pb2.ImageKind, img.kind, "IMAGE_KIND_")
            page = f" p.{img.page}" if img.page else ""
            line = f" 🖼  {kind}{page} {img.width}×{img.height} {img.file_id}"
            url = (urls or {}).get(img.file_id)
            if url:
                line += f" {url}"
            lines.append(line)
    return lines


@dataclass
class ChatView:
    """The state of one streamed turn, and how to show it.

    On a terminal a live region shows a spinner with the current phase, the answer as it
    grows, and the tool calls and images; when the turn ends it is replaced by the answer
    rendered as Markdown and the models used. Elsewhere (a pipe, a test) the tokens go to
    stdout as they arrive and the phases, tool calls and images to stderr as lines."""

    live: bool
    echo: bool = True  # False: only collect (e.g. --json prints the events itself)
    phase: str = ""
    text: str = ""
    tools: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    final: chat_pb2.Message | None = None
    error: chat_pb2.TurnError | None = None
    profile: int = 0
    models: list[str] = field(default_factory=list)
    turn_id: str = ""  # the turn (its answer's message id), from the first event
    sources: bool = False  # expand the source list (box, text, images with URLs)
    urls: dict[str, str] = field(default_factory=dict)  # signed URLs of produced images

    def apply(self, event: chat_pb2.ChatEvent) -> None:
        kind = event.WhichOneof("event")
        self.turn_id = self.turn_id or event.message_id
        if kind == "accepted":
            self.profile = event.accepted.model_profile
            self.phase = t("chat.accepted")
            self._line(self.phase)
        elif kind == "phase_started":
            desc = event.phase_started.description or enum_name(
                chat_pb2.Phase, event.phase_started.phase, "PHASE_"
            )
            self.phase = desc
            self._line(f"» {desc}")
        elif kind == "phase_progress":
            p = event.phase_progress
            if p.message:
                self.phase = p.message
        elif kind == "llm_token":
            tok = event.llm_token
            if tok.model and tok.model not in self.models:
                self.models.append(tok.model)
            self.text += tok.text
            if self.echo and not self.live:
                sys.stdout.write(tok.text)
                sys.stdout.flush()
        elif kind == "tool_call":
            call = event.tool_call
            args = json.dumps(json_format.MessageToDict(call.arguments), ensure_ascii=False)
            line = f"🔧 {call.name} {args}"
            self.tools.append(line)
            self._line(line)
        elif kind == "image_produced":
            img = event.image_produced.image
            kind_name = enum_name(chat_pb2.ImageKind, img.kind, "IMAGE_KIND_")
            page = f" p.{img.page}" if img.page else ""
            line = f"🖼  {kind_name}{page} {img.width}×{img.height} {img.file_id}"
            if event.image_produced.url:
                line += f" {event.image_produced.url}"
                self.urls[img.file_id] = event.image_produced.url
            self.images.append(line)
            self._line(line)
        elif kind == "warning":
            line = f"⚠ {event.warning.message or event.warning.code}"
            self.warnings.append(line)
            self._line(line)
        elif kind == "final":
            self.final = event.final.message
        elif kind == "error":
            self.error = event.error

    def _line(self, text: str) -> None:
        if self.echo and not self.live:
            err.print(text, markup=False, highlight=False)

    def renderable(self) -> RenderableType:
        parts: list[RenderableType] = []
        parts.extend(Text(x, style="dim") for x in self.tools + self.images + self.warnings)
        if self.text:
            parts.append(Text(self.text))
        parts.append(Spinner("dots", text=Text(self.phase or "…", style="cyan")))
        return Group(*parts)

    def models_used(self) -> list[str]:
        if self.final is not None and self.final.models_used:
            return list(self.final.models_used)
        return self.models

    def finish(self) -> None:
        """Print what stays after the turn: the Markdown answer (terminal), the models."""
        if self.live:
            for line in self.tools + self.images + self.warnings:
                out.print(line, style="dim", markup=False)
            content = self.final.content if self.final is not None else self.text
            if content:
                out.print(Markdown(content))
        elif self.text and not self.text.endswith("\n"):
            sys.stdout.write("\n")
            sys.stdout.flush()
        if self.final is not None:
            for line in source_lines(self.final, expand=self.sources, urls=self.urls):
                out.print(line, style="dim", markup=False, soft_wrap=True)
        models = ", ".join(self.models_used()) or "—"
        profile = enum_name(chat_pb2.ModelProfile, self.profile, "MODEL_PROFILE_")
        footer = t("chat.models_used", models=models, profile=profile)
        if self.final is not None and self.final.usage.total_tokens:
            footer += " · " + t("chat.tokens", n=self.final.usage.total_tokens)
        out.print(footer, style="dim", markup=False)
        if self.error is not None:
            err.print(t("chat.turn_failed", message=self.error.message), style="red", markup=False)


# ---- a training job -------------------------------------------------------------------


@dataclass
class JobView:
    """The state of a watched job: status, step, loss, tokens/s, ETA and a loss sparkline."""

    job_id: str
    live: bool
    echo: bool = True
    status: str = ""
    step: int = 0
    total: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    tps: float = 0.0
    eta: int = 0
    losses: list[float] = field(default_factory=list)
    checkpoints: int = 0
    logs: list[str] = field(default_factory=list)
    note: str = ""
    final: jobs_pb2.TrainingJob | None = None
    cost: str = ""
    last_sequence: int = 0
    _first: tuple[int, float] | None = None  # (step, time) of the first metric seen

    def seed(self, job: jobs_pb2.TrainingJob) -> None:
        self.status = enum_name(jobs_pb2.JobStatus, job.status, "JOB_STATUS_")
        p = job.progress
        self.step, self.total = int(p.steps.done), int(p.steps.total)
        self.epoch, self.tps, self.eta = p.epoch, p.tokens_per_second, int(p.eta_seconds)
        if p.loss:
            self.loss = p.loss
        self.cost = cost_text(job.cost)

    def apply(self, event: jobs_pb2.JobEvent) -> None:
        self.last_sequence = max(self.last_sequence, event.sequence)
        kind = event.WhichOneof("event")
        if kind == "status_changed":
            sc = event.status_changed
            self.status = enum_name(jobs_pb2.JobStatus, sc.status, "JOB_STATUS_")
            msg = f"{t('train.status')}: {self.status}"
            if sc.message:
                msg += f" — {sc.message}"
            if sc.error.message:
                msg += f" ({sc.error.message})"
            self._line(msg)
        elif kind == "metric":
            m = event.metric
            self.step = int(m.step)
            self.total = max(self.total, self.step)
            self.epoch, self.loss, self.tps = m.epoch, m.loss, m.tokens_per_second
            if m.HasField("eval_loss"):
                self.eval_loss = m.eval_loss
            self.losses.append(m.loss)
            when = m.create_time.seconds + m.create_time.nanos / 1e9
            if self._first is None or m.step < self._first[0]:
                self._first = (int(m.step), when)
            elif self.total > self.step and when > self._first[1]:
                per_step = (when - self._first[1]) / max(1, m.step - self._first[0])
                self.eta = int((self.total - self.step) * per_step)
            if self.step >= self.total:
                self.eta = 0
            self._line(self.summary())
        elif kind == "checkpoint":
            self.checkpoints += 1
            self._line(t("train.checkpoint", step=event.checkpoint.step))
        elif kind == "log":
            self.logs = [*self.logs, event.log.text][-3:]
            self._line(event.log.text)
        elif kind == "cost":  # live: what the job has cost so far
            self.cost = cost_text(event.cost)
        elif kind == "final":
            self.final = event.final
            self.seed(event.final)

    def _line(self, text: str) -> None:
        if self.echo and not self.live:
            err.print(text, markup=False, highlight=False)

    def summary(self) -> str:
        steps = f"{self.step}/{self.total}" if self.total else str(self.step)
        loss = f"{self.loss:.4f}" if self.loss is not None else "—"
        parts = [
            f"{t('train.step')} {steps}",
            f"loss {loss}",
            f"{self.tps:.0f} tok/s",
        ]
        if self.eta:
            parts.append(f"ETA {duration(self.eta)}")
        if self.cost:
            parts.append(t("cost", cost=self.cost))
        return " · ".join(parts)

    def renderable(self) -> RenderableType:
        head = Text(f"{self.job_id}  ", style="bold")
        head.append(self.status, style="cyan")
        lines: list[RenderableType] = [head, Text(self.summary())]
        if self.losses:
            lines.append(Text(sparkline(self.losses), style="green"))
        lines.extend(Text(x, style="dim") for x in self.logs)
        if self.note:
            lines.append(Text(self.note, style="yellow"))
        return Group(*lines)
