"""Datasets: background validation, line-numbered errors, stats, preview, isolation."""

from __future__ import annotations

import grpc
import pytest

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import datasets_pb2 as D
from tests.training.conftest import MEMO, Env, User, chat, jsonl

pytestmark = pytest.mark.asyncio


async def test_valid_chat_dataset_ready_with_stats(env: Env) -> None:
    u = User(env)
    ds = await u.dataset([*MEMO, chat("q", "a", system="be brief")])
    assert ds.status == D.DATASET_STATUS_READY, list(ds.errors)
    assert ds.format == D.DATASET_FORMAT_CHAT
    s = ds.stats
    assert s.example_count == 7
    assert s.total_tokens > s.trained_tokens > 0
    assert s.min_tokens <= s.mean_tokens <= s.max_tokens
    assert s.examples_over_max_length == 0


async def test_other_formats(env: Env) -> None:
    u = User(env)
    pc = await u.dataset(
        [{"prompt": "2+2?", "completion": "4"}, {"prompt": "hi", "completion": "hello"}]
    )
    assert pc.status == D.DATASET_STATUS_READY and pc.format == D.DATASET_FORMAT_PROMPT_COMPLETION
    conv = await u.dataset(
        [
            {
                "conversation_id": "c1",
                "turns": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            }
        ]
    )
    assert conv.status == D.DATASET_STATUS_READY and conv.format == D.DATASET_FORMAT_CONVERSATION


async def test_examples_over_max_length_counted(env: Env) -> None:
    u = User(env)
    ds = await u.dataset([chat("long " * 40, "answer " * 40), chat("a", "b")], max_seq_length=16)
    assert ds.stats.examples_over_max_length == 1


BAD = [
    (b'{"messages": [}\n', 1, "invalid JSON"),
    (jsonl([chat("a", "b")]) + b"[1, 2]\n", 2, "JSON object"),
    (
        jsonl([chat("a", "b"), {"messages": [{"role": "bot", "content": "x"}]}]),
        2,
        "unknown role 'bot'",
    ),
    (jsonl([{"messages": []}]), 1, "empty conversation"),
    (jsonl([{"messages": [{"role": "user", "content": "only a question"}]}]), 1, "no assistant"),
    (
        jsonl(
            [
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "system", "content": "s"},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ]
        ),
        1,
        "system message",
    ),
    (jsonl([chat("a", "b"), {"prompt": "p", "completion": "c"}]), 2, "differs"),
    (jsonl([{"foo": 1}]), 1, "unknown record format"),
    (jsonl([{"prompt": "", "completion": "c"}]), 1, "prompt"),
    (jsonl([{"conversation_id": "c", "turns": []}]), 1, "empty conversation"),
    (b"\n\n", 0, "no records"),
    (b'{"messages": "\xff\xfe"}\n', 0, "UTF-8"),
]


@pytest.mark.parametrize(("raw", "line", "needle"), BAD)
async def test_bad_datasets(env: Env, raw: bytes, line: int, needle: str) -> None:
    u = User(env)
    try:
        ds = await u.dataset(raw)
    except grpc.aio.AioRpcError as exc:  # storage refuses some files outright (not UTF-8)
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        return
    assert ds.status == D.DATASET_STATUS_ERROR, ds
    assert ds.error_count >= 1
    assert ds.errors[0].line == line, ds.errors
    assert needle.lower() in ds.errors[0].message.lower(), ds.errors


async def test_errors_capped_at_100_and_counted(env: Env) -> None:
    u = User(env)
    ds = await u.dataset(b"{bad}\n" * 150)
    assert ds.status == D.DATASET_STATUS_ERROR
    assert len(ds.errors) == 100 and ds.error_count == 150
    assert [e.line for e in ds.errors[:3]] == [1, 2, 3]


async def test_create_dataset_bad_arguments(env: Env) -> None:
    u = User(env)
    file_id = await u.upload(jsonl(MEMO))
    cases = [
        (D.CreateDatasetRequest(name="", file_id=file_id, base_model=env.tiny), "name"),
        (D.CreateDatasetRequest(name="x" * 201, file_id=file_id, base_model=env.tiny), "name"),
        (D.CreateDatasetRequest(name="n", file_id=file_id, base_model="gpt-17"), "base_model"),
        (
            D.CreateDatasetRequest(
                name="n", file_id=file_id, base_model=env.tiny, max_seq_length=8
            ),
            "max_seq_length",
        ),
    ]
    for req, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await u.datasets.CreateDataset(req, metadata=u.md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")
    doc = await u.upload(b'{"a": 1}', filename="x.json", bucket=storage_pb2.BUCKET_DOCUMENTS)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.datasets.CreateDataset(
            D.CreateDatasetRequest(name="n", file_id=doc, base_model=env.tiny), metadata=u.md
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    other = User(env)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await other.datasets.CreateDataset(
            D.CreateDatasetRequest(name="n", file_id=file_id, base_model=env.tiny),
            metadata=other.md,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_preview_applies_chat_template_and_marks_spans(env: Env) -> None:
    u = User(env)
    ds = await u.dataset(
        [
            chat("What colour is the sky?", "Blue.", system="Be brief."),
            chat("long " * 40, "answer " * 40),
        ],
        max_seq_length=64,
    )
    resp = await u.datasets.PreviewDataset(
        D.PreviewDatasetRequest(id=ds.id, limit=10), metadata=u.md
    )
    assert len(resp.examples) == 2
    ex = resp.examples[0]
    assert ex.line == 1 and ex.index == 0
    assert "<|im_start|>user\nWhat colour is the sky?<|im_end|>" in ex.text
    assert [ex.text[s.start : s.end] for s in ex.trained_spans] == ["Blue.<|im_end|>"]
    assert 0 < ex.trained_token_count < ex.token_count
    long = resp.examples[1]
    assert long.truncated and long.token_count > 64
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.datasets.PreviewDataset(D.PreviewDatasetRequest(id=ds.id, limit=-1), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_delete_and_isolation(env: Env) -> None:
    u, other = User(env), User(env)
    a = await u.dataset(MEMO)
    b = await u.dataset(b"{oops}\n")
    page1 = await u.datasets.ListDatasets(D.ListDatasetsRequest(page_size=1), metadata=u.md)
    assert [d.id for d in page1.datasets] == [b.id] and page1.next_page_token
    page2 = await u.datasets.ListDatasets(
        D.ListDatasetsRequest(page_size=1, page_token=page1.next_page_token), metadata=u.md
    )
    assert [d.id for d in page2.datasets] == [a.id]
    ready = await u.datasets.ListDatasets(
        D.ListDatasetsRequest(status=D.DATASET_STATUS_READY), metadata=u.md
    )
    assert [d.id for d in ready.datasets] == [a.id]
    for call in (
        other.datasets.GetDataset(D.GetDatasetRequest(id=a.id), metadata=other.md),
        other.datasets.DeleteDataset(D.DeleteDatasetRequest(id=a.id), metadata=other.md),
        other.datasets.PreviewDataset(D.PreviewDatasetRequest(id=a.id), metadata=other.md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await other.datasets.ListDatasets(D.ListDatasetsRequest(), metadata=other.md)
    assert not listed.datasets
    await u.datasets.DeleteDataset(D.DeleteDatasetRequest(id=a.id), metadata=u.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.datasets.GetDataset(D.GetDatasetRequest(id=a.id), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
