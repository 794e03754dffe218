"""Dataset records: parsing and checking JSON Lines, rendering examples with the base
model's chat template (with the assistant spans that carry loss), and packing them into
sequences. Pure logic: the tokenizer is passed in."""

from __future__ import annotations

import bisect
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aivera.training.v1 import datasets_pb2

CHAT = datasets_pb2.DATASET_FORMAT_CHAT
PROMPT_COMPLETION = datasets_pb2.DATASET_FORMAT_PROMPT_COMPLETION
CONVERSATION = datasets_pb2.DATASET_FORMAT_CONVERSATION

FORMAT_NAMES: dict[int, str] = {
    CHAT: "chat",
    PROMPT_COMPLETION: "prompt/completion",
    CONVERSATION: "conversation",
}
ROLES = ("system", "user", "assistant")
IGNORE = -100


@dataclass
class Example:
    """One valid record, read as chat messages."""

    line: int
    messages: list[dict[str, str]]
    conversation_id: str = ""


@dataclass(frozen=True)
class _Invalid:
    """A line that is not JSON (kept in order with the records)."""

    message: str


@dataclass
class Parsed:
    format: int = 0
    examples: list[Example] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    error_count: int = 0


def _detect(record: dict[str, Any]) -> int | None:
    if "messages" in record:
        return CHAT
    if "prompt" in record or "completion" in record:
        return PROMPT_COMPLETION
    if "turns" in record or "conversation_id" in record:
        return CONVERSATION
    return None


def _messages(items: Any, what: str) -> list[dict[str, str]]:
    """Checked chat messages; raises ValueError with the reason."""
    if not isinstance(items, list):
        raise ValueError(f"'{what}' must be a list")
    if not items:
        raise ValueError("empty conversation")
    out: list[dict[str, str]] = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ValueError(f"{what}[{i}] must be an object with role and content")
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str):
            raise ValueError(f"{what}[{i}] has no role")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} in {what}[{i}] (use system, user, assistant)")
        if not isinstance(content, str):
            raise ValueError(f"{what}[{i}] content must be a string")
        if role == "system" and i != 1:
            raise ValueError(f"{what}[{i}]: a system message may only come first")
        if role != "assistant" and not content.strip():
            raise ValueError(f"{what}[{i}] has empty content")
        out.append({"role": role, "content": content})
    if all(m["role"] == "system" for m in out):
        raise ValueError("empty conversation")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise ValueError("no assistant message")
    return out


def _record(record: dict[str, Any], fmt: int) -> Example:
    if fmt == CHAT:
        return Example(0, _messages(record.get("messages"), "messages"))
    if fmt == PROMPT_COMPLETION:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("'prompt' must be a non-empty string")
        if not isinstance(completion, str) or not completion.strip():
            raise ValueError("'completion' must be a non-empty string")
        return Example(
            0,
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
        )
    cid = record.get("conversation_id")
    if not isinstance(cid, str) or not cid:
        raise ValueError("'conversation_id' must be a non-empty string")
    if "turns" not in record:
        raise ValueError("'turns' is missing")
    return Example(0, _messages(record.get("turns"), "turns"), conversation_id=cid)


def _array_records(text: str, error: Any) -> list[tuple[int, Any]]:
    """The elements of a `.json` file holding one array of records, each with the line it
    starts on (element by element, so a line number points at the record)."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    i = len(text) - len(text.lstrip(ws)) + 1  # past "["
    records: list[tuple[int, Any]] = []
    while True:
        while i < len(text) and text[i] in ws:
            i += 1
        if i < len(text) and text[i] == "]":
            rest = text[i + 1 :].strip(ws)
            if rest:
                error(text.count("\n", 0, i) + 1, "unexpected content after the array")
            return records
        line = text.count("\n", 0, i) + 1
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            error(exc.lineno, f"invalid JSON: {exc.msg} at column {exc.colno}")
            return records
        records.append((line, record))
        while i < len(text) and text[i] in ws:
            i += 1
        if i < len(text) and text[i] == ",":
            i += 1
        elif not (i < len(text) and text[i] == "]"):
            error(text.count("\n", 0, i) + 1, "invalid JSON: expected ',' or ']' in the array")
            return records


def parse_jsonl(data: bytes, *, max_errors: int = 100) -> Parsed:
    """Every record checked (JSON Lines, one record a line; or a `.json` file holding one
    array of records); the first `max_errors` problems kept, all counted."""
    out = Parsed()

    def error(line: int, message: str) -> None:
        out.error_count += 1
        if len(out.errors) < max_errors:
            out.errors.append((line, message))

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        error(0, f"the file is not UTF-8 text (byte {exc.start})")
        return out
    if text.startswith("\ufeff"):
        text = text[1:]
    items: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):  # a record is an object: "[" opens a .json array
        items = _array_records(text, error)
    else:
        for number, raw in enumerate(text.split("\n"), start=1):
            if not raw.strip():
                continue
            try:
                items.append((number, json.loads(raw)))
            except json.JSONDecodeError as exc:
                items.append((number, _Invalid(f"invalid JSON: {exc.msg} at column {exc.colno}")))
    seen_record = bool(items) or out.error_count > 0
    for number, record in items:
        if isinstance(record, _Invalid):
            error(number, record.message)
            continue
        if not isinstance(record, dict):
            error(number, "a record must be a JSON object")
            continue
        fmt = _detect(record)
        if fmt is None:
            error(
                number,
                "unknown record format: expected 'messages', 'prompt'/'completion' "
                "or 'conversation_id'/'turns'",
            )
            continue
        if out.format and fmt != out.format:
            error(
                number,
                f"record format {FORMAT_NAMES[fmt]} differs from the file's format "
                f"{FORMAT_NAMES[out.format]}",
            )
            continue
        try:
            example = _record(record, fmt)
        except ValueError as exc:
            error(number, str(exc))
            if not out.format:
                out.format = fmt
            continue
        out.format = out.format or fmt
        example.line = number
        out.examples.append(example)
    if not seen_record:
        error(0, "the file has no records")
    return out


# -- rendering ------------------------------------------------------------------------------
@dataclass
class Rendered:
    """An example with the chat template applied and tokenized."""

    text: str
    input_ids: list[int]
    trained: list[bool]  # per token: carries loss (assistant content + end of turn)
    spans: list[tuple[int, int]]  # character spans of `text` that carry loss
    offsets: list[tuple[int, int]]


def _template(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    )


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of its assistant turns (content plus the
    template's end-of-turn marker, without trailing whitespace)."""
    full = _template(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _template(tokenizer, messages[:i], True) if i else ""
        upto = _template(tokenizer, messages[: i + 1], False)
        if i and full.startswith(upto) and upto.startswith(before) and len(before) >= cursor:
            start, end = len(before), len(upto.rstrip())
        else:  # a template that is not prefix-stable: find the content itself
            start = full.find(message["content"], cursor)
            if start < 0:
                continue
            end = start + len(message["content"])
        if message["content"] and end > start:
            spans.append((start, end))
            cursor = end
    return full, spans


def render(tokenizer: Any, messages: list[dict[str, str]]) -> Rendered:
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    starts = [s for s, _ in spans]
    trained: list[bool] = []
    for a, b in offsets:
        k = bisect.bisect_right(starts, a) - 1
        trained.append(k >= 0 and a < spans[k][1] and b > a)
    return Rendered(text, ids, trained, spans, offsets)


@dataclass
class TokenStats:
    example_count: int = 0
    total_tokens: int = 0
    trained_tokens: int = 0
    min_tokens: int = 0
    max_tokens: int = 0
    over_max_length: int = 0

    @property
    def mean_tokens(self) -> float:
        return self.total_tokens / self.example_count if self.example_count else 0.0

    def add(self, rendered: Rendered, max_len: int) -> None:
        n = len(rendered.input_ids)
        self.min_tokens = n if self.example_count == 0 else min(self.min_tokens, n)
        self.max_tokens = max(self.max_tokens, n)
        self.example_count += 1
        self.total_tokens += n
        self.trained_tokens += sum(rendered.trained[:max_len])
        if n > max_len:
            self.over_max_length += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "example_count": self.example_count,
            "total_tokens": self.total_tokens,
            "trained_tokens": self.trained_tokens,
            "min_tokens": self.min_tokens,
            "mean_tokens": self.mean_tokens,
            "max_tokens": self.max_tokens,
            "examples_over_max_length": self.over_max_length,
        }


# -- packing --------------------------------------------------------------------------------
@dataclass
class Segment:
    """One example ready to train: tokens and next-token targets (IGNORE where no loss)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def segment(rendered: Rendered, max_len: int) -> Segment:
    """Truncate to `max_len` and shift targets inside the example: the last token of one
    example never predicts the first of the next."""
    ids = rendered.input_ids[:max_len]
    trained = rendered.trained[:max_len]
    labels = [ids[t + 1] if trained[t + 1] else IGNORE for t in range(len(ids) - 1)]
    labels.append(IGNORE)
    return Segment(ids, labels)


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: example indexes grouped into bins of at most `capacity` tokens.
    Deterministic for the same lengths."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin index), sorted
    for i in order:
        n = min(lengths[i], capacity)
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            remaining, at = free.pop(k)
            bins[at].append(i)
            bisect.insort(free, (remaining - n, at))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    for members in bins:
        members.sort()
    return bins


def split_eval(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and eval example indexes (eval: `fraction` of them, at least 1, when > 0)."""
    indexes = list(range(count))
    if fraction <= 0 or count < 2:
        return indexes, []
    rng = random.Random(seed)
    rng.shuffle(indexes)
    n_eval = min(count - 1, max(1, round(count * fraction)))
    return sorted(indexes[n_eval:]), sorted(indexes[:n_eval])


def epoch_order(n_bins: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n_bins))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def steps_per_epoch(n_bins: int, batch_size: int, grad_accum: int) -> int:
    micro = -(-n_bins // batch_size)
    return max(1, -(-micro // grad_accum))
