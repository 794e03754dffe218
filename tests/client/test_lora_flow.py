"""`aivera lora` against the real auth, storage and training services and an in-process
training worker (the SIMULATE executor for image LoRAs): create, add four generated
512×512 PNGs, start --watch to READY, generate (images saved, trigger word injected),
list the generations; bad input comes back as the server's text with an exit code, never a
traceback; another user's image LoRA is not found; the Replicate key is stored by the key
commands."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from client import Client, Endpoints
from client.credentials import CredentialStore
from tests.client.mesh import TrainMesh, signed_in_cli, start_train_mesh

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
async def lora_mesh(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TrainMesh]:
    async with start_train_mesh(
        database_url, tmp_path_factory.mktemp("lora-mesh"), rag=False
    ) as mesh:
        yield mesh


def pngs(folder: Path, n: int, side: int = 512) -> list[Path]:
    """`n` distinct PNGs (different colours and a stripe each: the server refuses
    duplicates by their bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = Image.new("RGB", (side, side), (40 * i % 256, 90, 200 - 30 * i % 200))
        for x in range(side):
            img.putpixel((x, (37 * i + 11) % side), (255, 255, 255))
        path = folder / f"ref-{i}.png"
        img.save(path)
        paths.append(path)
    return paths


def word() -> str:
    return "tok" + uuid.uuid4().hex[:8]


async def test_create_add_train_generate_and_list(lora_mesh: TrainMesh, tmp_path: Path) -> None:
    cli = await signed_in_cli(lora_mesh, tmp_path / "cfg")
    trigger = word()
    r = await cli("lora", "create", "Акварель", "--kind", "style", "--trigger", trigger, "--json")
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    lora_id = created["id"]
    assert created["status"] == "IMAGE_LORA_STATUS_DRAFT"

    images = pngs(tmp_path / "refs", 4)
    r = await cli("lora", "add", trigger, *map(str, images), "--caption", "a striped square")
    assert r.exit_code == 0, r.output
    r = await cli("lora", "show", trigger, "--json")
    shown = json.loads(r.stdout)
    refs = shown["reference_images"]
    assert len(refs) == 4
    assert {(x["width"], x["height"], x["format"]) for x in refs} == {
        (512, 512, "IMAGE_FORMAT_PNG")
    }
    assert {x["caption"] for x in refs} == {"a striped square"}

    # start --watch follows the training to READY (exit 0) and says how to use it.
    r = await cli("lora", "start", lora_id, "--executor", "simulate", "--steps", "8", "--watch")
    assert r.exit_code == 0, r.output
    assert "ready" in r.output and trigger in r.output
    r = await cli("lora", "show", lora_id, "--json")
    ready = json.loads(r.stdout)
    assert ready["status"] == "IMAGE_LORA_STATUS_READY"
    assert ready["simulated"] is True and ready["executor"] == "IMAGE_LORA_EXECUTOR_SIMULATE"
    assert ready["progress"] == 1 and ready["attempt"] == 1

    # The list shows it ready, marked simulated.
    r = await cli("lora", "list")
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if trigger in x)
    assert "ready" in line and "симуляция" in line

    # generate: two 16:9 images saved in --out, the trigger word put into the prompt.
    out = tmp_path / "out"
    r = await cli(
        "lora",
        "generate",
        trigger,
        "a lighthouse at dusk",
        "-n",
        "2",
        "--aspect",
        "16:9",
        "--seed",
        "7",
        "--scale",
        "0.8",
        "--out",
        str(out),
    )
    assert r.exit_code == 0, r.output
    files = sorted(out.glob("*.png"))
    assert len(files) == 2, r.output
    for f in files:
        assert f.read_bytes()[:8] == PNG_MAGIC
        with Image.open(f) as img:
            assert img.width > img.height  # landscape, as asked

    r = await cli("lora", "generations", trigger, "--json")
    assert r.exit_code == 0, r.output
    gens = json.loads(r.stdout)
    assert len(gens) == 1
    g = gens[0]
    assert g["status"] == "GENERATION_STATUS_SUCCEEDED" and g["simulated"] is True
    assert trigger in g["prompt"] and "a lighthouse at dusk" in g["prompt"]
    assert g["seed"] == "7" and len(g["images"]) == 2 and g["lora_scale"] == 0.8

    # The blocking client streams the same events (in a thread: the services run on
    # this test's event loop), with the CLI's session.
    def blocking_generate() -> list[str]:
        store = CredentialStore(cli.credentials)
        with Client(Endpoints.resolve(env=lora_mesh.env()), store=store) as c:
            return [e.WhichOneof("event") or "" for e in c.generate_images(lora_id, "a boat")]

    kinds = await asyncio.to_thread(blocking_generate)
    assert kinds[0] == "queued" and kinds[-1] == "done" and "image" in kinds, kinds


async def test_bad_input_is_the_servers_text_not_a_traceback(
    lora_mesh: TrainMesh, tmp_path: Path
) -> None:
    cli = await signed_in_cli(lora_mesh, tmp_path / "cfg")
    trigger = word()
    r = await cli("lora", "create", "Кот", "--kind", "pet", "--trigger", trigger)
    assert r.exit_code == 2 and "style | character | product" in r.output

    r = await cli("lora", "create", "Кот", "--kind", "character", "--trigger", "1 word")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "trigger_word" in r.output

    r = await cli("lora", "create", "Кот", "--kind", "character", "--trigger", trigger)
    assert r.exit_code == 0, r.output
    # Three images: training is refused with the server's own text, exit 1.
    r = await cli("lora", "add", trigger, *map(str, pngs(tmp_path / "refs", 3)))
    assert r.exit_code == 0, r.output
    r = await cli("lora", "start", trigger, "--executor", "simulate")
    assert r.exit_code == 1, r.output
    assert "Для LoRA нужно от 4 до 15 референсных изображений." in r.output
    assert "Traceback" not in r.output

    # English when asked; a too-small image and an oversized file are refused per file,
    # the others of the same command still go in.
    small = pngs(tmp_path / "small", 1, side=256)[0]
    big = tmp_path / "big.png"
    big.write_bytes(PNG_MAGIC + b"\0" * (10 * 1024 * 1024 + 1))
    fourth = pngs(tmp_path / "fourth", 5)[4]
    r = await cli("lora", "add", trigger, str(small), str(big), str(fourth), AIVERA_LANG="en")
    assert r.exit_code == 1, r.output
    assert "each side must be 512 to 4096 pixels" in r.output
    assert "big.png: 10.0 MiB is over the 10 MiB" in r.output
    r = await cli("lora", "show", trigger, "--json")
    assert len(json.loads(r.stdout)["reference_images"]) == 4

    # Generating with a LoRA that is not trained: the server's reason, in words.
    r = await cli("lora", "generate", trigger, "a cat", "--out", str(tmp_path / "o"))
    assert r.exit_code == 1 and "LoRA ещё не обучена" in r.output

    # Another user's image LoRA is not found (exit 4), by id.
    r = await cli("lora", "show", trigger, "--json")
    lora_id = json.loads(r.stdout)["id"]
    other = await signed_in_cli(lora_mesh, tmp_path / "other")
    r = await other("lora", "show", lora_id)
    assert r.exit_code == 4, r.output
    r = await other("lora", "show", trigger)
    assert r.exit_code == 4, r.output


async def test_replicate_key_is_stored_by_the_key_commands(
    lora_mesh: TrainMesh, tmp_path: Path
) -> None:
    cli = await signed_in_cli(lora_mesh, tmp_path / "cfg")
    r = await cli(
        "key", "set", "--provider", "replicate", input="r8_secretTokenValue0123456789abcd\n"
    )
    assert r.exit_code == 0 and "abcd" in r.output and "r8_secret" not in r.output
    r = await cli("key", "status", "--provider", "replicate")
    assert "abcd" in r.output
    # `aivera me` shows both keys, each by its last four characters only.
    r = await cli("me", "--json")
    shown = json.loads(r.stdout)
    assert shown["replicate_key"]["is_set"] and shown["replicate_key"]["last4"] == "abcd"
    assert not shown["provider_key"].get("is_set")
    r = await cli("me")
    assert "Replicate" in r.output and "r8_secret" not in r.output
    r = await cli("key", "status")  # Gemini: a separate key, not set
    assert "не задан" in r.output
    r = await cli("key", "set", "--provider", "openai", input="x\n")
    assert r.exit_code == 2
    r = await cli("key", "delete", "--provider", "replicate")
    assert r.exit_code == 0
    r = await cli("key", "status", "--provider", "replicate")
    assert "не задан" in r.output
