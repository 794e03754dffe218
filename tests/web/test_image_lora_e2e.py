"""The console's image LoRA screens end to end: Debian's headless Chromium
(playwright-core, `web/e2e/image_loras.e2e.mjs`) against the real auth, storage and
training services with an in-process worker (the SIMULATE executor), behind the real local
gateway.

A user opens the create dialog, picks a kind, images (a text file is refused in the page,
three images are not enough to start), name and trigger word, chooses the simulation and
creates: the server refuses a 256-pixel image in Russian while the other four go in; the
refused one is removed and training starts. The page follows the LoRA to READY, marked
simulated, with its reference thumbnails; then generates two 16:9 images that appear on the
page (the trigger word put into the prompt) and lists the generation. Screenshots `l0*.png`
go to web/test-results/."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from tests.web.conftest import WEB, chromium_path, needs_browser
from tests.web.test_studio_e2e import Studio, drive, new_user, studio_mesh

pytestmark = needs_browser


@pytest.fixture(scope="module")
async def lora_studio(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Studio]:
    async with studio_mesh(database_url, tmp_path_factory) as mesh:
        yield mesh


def png(path: Path, side: int, shade: int) -> str:
    img = Image.new("RGB", (side, side), (shade, 120, 255 - shade))
    for x in range(side):
        img.putpixel((x, shade % side), (255, 255, 255))  # distinct bytes per image
    img.save(path)
    return str(path)


async def test_create_train_and_generate_in_the_browser(
    lora_studio: Studio, tmp_path: Path
) -> None:
    user_token = await new_user(lora_studio, "lora-")
    images = [png(tmp_path / f"ref-{i}.png", 512, 40 * i + 7) for i in range(4)]
    small = png(tmp_path / "small.png", 256, 3)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    trigger = "tok" + uuid.uuid4().hex[:6]
    results = WEB / "test-results"
    found = await drive(
        {
            "BASE_URL": lora_studio.base_url + "/",
            "USER_TOKEN": user_token,
            "IMAGES": ",".join(images),
            "SMALL": small,
            "TEXT": str(text),
            "TRIGGER": trigger,
            "CHROMIUM": chromium_path() or "",
            "OUT": str(results),
        },
        "image_loras.e2e.mjs",
    )
    assert found["steps"] == [
        "signed-in",
        "create-checked",
        "created-and-started",
        "trained",
        "generated",
        "listed",
    ]
    assert found["emptyList"] == 0
    # Checked in the page before any upload: the text file; three images cannot start.
    assert found["clientProblems"] == ["type"]
    assert found["startDisabledWithThree"] is True
    assert found["startDisabledWithFive"] is False and found["previews"] == 5
    # The server's refusal of the small image, as the server words it in Russian.
    assert "от 512 до 4096 пикселей" in found["serverRefusal"]
    assert found["addedBeforeRetry"] == 4
    # Followed to READY; simulated, and the page says so.
    # The page followed it live: it saw it before READY, and READY last.
    assert len(found["statuses"]) >= 2 and found["statuses"][-1] == "READY", found["statuses"]
    assert found["simulatedBadge"] == 1
    # The page followed the training job's events: every step, and the chart drawn from them.
    done, total = re.fullmatch(r"Шаг (\d+) из (\d+)", found["jobSteps"].strip()).groups()  # type: ignore[union-attr]
    assert done == total and int(total) > 0, found["jobSteps"]
    assert found["chartPoints"] == int(total)
    assert found["ctaFocus"] == "gen-prompt"
    assert found["referenceImages"] == 4 and found["referenceThumbs"] == 4
    assert found["triggerShown"] == trigger
    # Generation: the trigger word is put in, two landscape images shown from signed URLs.
    assert trigger in found["triggerHint"]
    assert found["effectivePrompt"].startswith(f"{trigger} a portrait in the rain")
    assert len(found["generatedSizes"]) == 2
    assert all(w > h for w, h in found["generatedSizes"]), found["generatedSizes"]
    assert all(u.startswith(lora_studio.base_url + "/files/") for u in found["generatedUrls"])
    assert found["gallery"] >= 1
    assert found["listStatus"] == "READY" and found["listSimulated"] == 1
    assert found["cspViolations"] == []
    assert found["consoleErrors"] == []
    assert found["requestsWithToken"] == []
    for name in ("l01-create", "l02-refused", "l04-ready", "l05-generated"):
        assert (results / f"{name}.png").stat().st_size > 0
