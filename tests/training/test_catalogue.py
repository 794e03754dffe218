"""The base-model catalogue and the hardware classes: ListBaseModels describes every
allowed base model (a catalogue entry from its published figures without loading or
converting it, an unknown folder from its config), ListHardwareClasses lists the classes
with their price, and the memory / time formulas behave as documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from aivera.training.v1 import catalogue_pb2 as C
from aivera.training.v1 import catalogue_pb2_grpc
from aivera.training.v1 import jobs_pb2 as J
from services.common import catalogue as shared
from tests.helpers.errors import reason
from tests.helpers.services import bearer
from tests.training.conftest import Env

GiB = 1024**3


@pytest.fixture(scope="module")
def training_overrides(tiny_model: Path) -> dict[str, Any]:
    return {"allowed_base_models": [str(tiny_model), "smollm2-135m-instruct"]}


def stub(env: Env) -> tuple[catalogue_pb2_grpc.CatalogueServiceStub, Any]:
    return catalogue_pb2_grpc.CatalogueServiceStub(env.chan), bearer(
        env.keyring.mint("catalogue-user", ttl=600)
    )


async def test_list_base_models_describes_each_allowed_model(env: Env) -> None:
    cat, md = stub(env)
    got = await cat.ListBaseModels(C.ListBaseModelsRequest(), metadata=md)
    assert [m.name for m in got.base_models] == [env.tiny, "smollm2-135m-instruct"]
    tiny, smol = got.base_models
    # The tiny test folder is not in the catalogue: described from its config.
    assert tiny.is_default and tiny.family == "llama" and tiny.license == "unknown"
    assert tiny.context_length == 1024 and tiny.hidden_size == 64 and tiny.num_layers == 2
    assert 0 < tiny.parameter_count < 1_000_000
    assert tiny.chat_template == "chatml" and tiny.served_locally
    # SmolLM2 from the catalogue (not converted: no weights read).
    assert not smol.is_default and smol.family == "smollm2"
    assert smol.parameter_count == 134_515_008 and smol.context_length == 8192
    assert smol.license == "Apache-2.0" and smol.chat_template == "chatml"
    assert list(smol.methods) == [J.TRAINING_METHOD_LORA, J.TRAINING_METHOD_QLORA]
    assert smol.served_locally
    req = {(r.method, r.max_seq_length): r.min_gpu_memory_bytes for r in smol.memory_requirements}
    assert {n for _, n in req} == {512, 2048, 4096, 8192}  # 32768 is past its context
    for n in (512, 2048, 4096, 8192):
        assert req[(J.TRAINING_METHOD_QLORA, n)] < req[(J.TRAINING_METHOD_LORA, n)]
    assert req[(J.TRAINING_METHOD_LORA, 512)] < req[(J.TRAINING_METHOD_LORA, 8192)]
    # Pages of one.
    first = await cat.ListBaseModels(C.ListBaseModelsRequest(page_size=1), metadata=md)
    assert [m.name for m in first.base_models] == [env.tiny] and first.next_page_token
    second = await cat.ListBaseModels(
        C.ListBaseModelsRequest(page_size=1, page_token=first.next_page_token), metadata=md
    )
    assert [m.name for m in second.base_models] == ["smollm2-135m-instruct"]
    assert not second.next_page_token


async def test_list_hardware_classes(env: Env) -> None:
    cat, md = stub(env)
    got = await cat.ListHardwareClasses(C.ListHardwareClassesRequest(), metadata=md)
    names = [h.name for h in got.hardware_classes]
    assert names[0] == "cpu" and got.hardware_classes[0].is_default
    assert set(names) == set(env.settings.training_hardware_classes)
    h100 = next(h for h in got.hardware_classes if h.name == "nvidia-h100")
    assert h100.gpu_count == 1 and h100.memory_bytes > 79 * GiB
    assert h100.hourly_rate_micros == 4_500_000 and h100.currency_code == "USD"
    assert h100.node_selector["nvidia.com/gpu.product"].startswith("NVIDIA-H100")
    page = await cat.ListHardwareClasses(C.ListHardwareClassesRequest(page_size=2), metadata=md)
    rest = await cat.ListHardwareClasses(
        C.ListHardwareClassesRequest(page_token=page.next_page_token), metadata=md
    )
    assert [h.name for h in [*page.hardware_classes, *rest.hardware_classes]] == names


async def test_bad_input_and_no_token(env: Env) -> None:
    cat, md = stub(env)
    for bad in (
        C.ListBaseModelsRequest(page_size=-1),
        C.ListBaseModelsRequest(page_token="not-a-token"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cat.ListBaseModels(bad, metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A page token is bound to its caller: another user's token is refused.
    page = await cat.ListHardwareClasses(C.ListHardwareClassesRequest(page_size=1), metadata=md)
    other = bearer(env.keyring.mint("someone-else", ttl=600))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cat.ListHardwareClasses(
            C.ListHardwareClassesRequest(page_token=page.next_page_token), metadata=other
        )
    assert reason(err.value) == "INVALID_PAGE_TOKEN"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cat.ListBaseModels(C.ListBaseModelsRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_memory_formula_orders_methods_lengths_and_checkpointing() -> None:
    llama8b = shared.lookup("llama-3.1-8b-instruct")
    assert llama8b is not None
    a = llama8b.arch
    lora = shared.training_memory_bytes(a, shared.LORA, 2048)
    qlora = shared.training_memory_bytes(a, shared.QLORA, 2048)
    # bf16 weights alone are 16 GB: LoRA of an 8B model never fits a 24 GB L4 at 2k,
    # QLoRA does (the common experience with these models).
    assert lora > 16e9 and 24 * GiB < lora < 48 * GiB
    assert qlora < 22.5 * GiB
    ckpt = shared.training_memory_bytes(a, shared.LORA, 2048, gradient_checkpointing=True)
    assert ckpt < lora
    assert shared.training_memory_bytes(a, shared.LORA, 2048, batch_size=4) > lora
    # A folder named like a catalogue model is that model; an unknown one is not.
    assert shared.lookup("/models/Llama-3.1-8B-Instruct/") is llama8b
    assert shared.lookup("/models/my-own-model") is None
    assert shared.template_name("<|start_header_id|>x") == "llama3"
    assert shared.template_name(None) == ""


def test_time_formula() -> None:
    smol = shared.lookup("smollm2-135m-instruct")
    assert smol is not None
    flops = shared.training_flops(smol.arch, 200, method=shared.LORA)
    # DESIGN.md: ~200 tokens/s of LoRA on 2 CPU cores, the cpu class's 0.1 TFLOP/s.
    assert 0.5 < shared.training_seconds(flops, 0.1) < 2.0
    assert shared.training_flops(smol.arch, 200, method=shared.QLORA) > flops
    assert shared.training_seconds(flops, 0.1, devices=2) < shared.training_seconds(flops, 0.1)
