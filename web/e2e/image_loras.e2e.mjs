// Image LoRAs end to end in Debian's headless Chromium (e2e/harness.mjs), against the real
// auth, storage and training services (the SIMULATE executor on an in-process worker)
// behind the local gateway. Run by tests/web/test_image_lora_e2e.py, which asserts on the
// JSON line of findings.
//
// env: BASE_URL, USER_TOKEN, IMAGES (4 PNG paths, comma-separated), SMALL (a 256×256 PNG),
//      TEXT (a text file), TRIGGER, CHROMIUM, OUT
import { browse } from "./harness.mjs";

const { BASE_URL, USER_TOKEN, IMAGES, SMALL, TEXT, TRIGGER } = process.env;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Images that the browser decoded (a broken signed URL would leave naturalWidth 0).
const decoded = (locator) => locator.evaluateAll((els) => els.filter((i) => i.complete && i.naturalWidth > 0).length);

await browse(
  async (page, { found, step, shot }) => {
    // 1. sign in on the image LoRA page
    await page.goto(BASE_URL + "#/studio/loras");
    await page.getByLabel("Статический токен").fill(USER_TOKEN);
    await page.getByRole("button", { name: "Войти" }).click();
    await page.getByTestId("loras-page").waitFor();
    found.emptyList = await page.getByTestId("lora").count();
    step("signed-in");

    // 2. the create dialog: kind, images checked in the page, name, trigger word, executor
    await page.getByTestId("new-lora").click();
    const dialog = page.getByTestId("create-lora");
    await dialog.waitFor();
    await page.getByTestId("kind-CHARACTER").check();
    const good = IMAGES.split(",");
    await page.getByTestId("lora-images-input").setInputFiles([...good.slice(0, 3), TEXT]);
    found.clientProblems = await page.locator("[data-testid=image-problems] li").evaluateAll((els) => els.map((e) => e.dataset.problem));
    await page.getByTestId("lora-name").fill("Портрет");
    await page.getByTestId("lora-trigger").fill(TRIGGER);
    found.startDisabledWithThree = await page.getByTestId("create-and-train").isDisabled();
    await page.getByTestId("lora-images-input").setInputFiles([good[3], SMALL]);
    found.previews = await decoded(page.locator("[data-testid=pending-image] img"));
    found.startDisabledWithFive = await page.getByTestId("create-and-train").isDisabled();
    await page.getByTestId("lora-executor").selectOption({ label: "Симуляция (без обучения)" });
    await shot(page, "l01-create");
    step("create-checked");

    // 3. create: the server refuses the small image (its text, in Russian); the others are in
    await page.getByTestId("create-and-train").click();
    const failed = page.locator("[data-testid=pending-image][data-state=failed]");
    await failed.waitFor();
    found.serverRefusal = await failed.getByTestId("error").innerText();
    found.addedBeforeRetry = await page.locator("[data-testid=pending-image][data-state=added]").count();
    await shot(page, "l02-refused");
    await failed.getByRole("button", { name: "Убрать" }).click();
    await page.getByTestId("create-and-train").click();
    await page.getByTestId("lora-detail").waitFor();
    step("created-and-started");

    // 4. training: status and progress followed until READY, marked simulated
    const statuses = [];
    const deadline = Date.now() + 60_000;
    let status = "";
    let midShot = false;
    while (Date.now() < deadline) {
      status = (await page.getByTestId("lora-detail").getAttribute("data-status")) ?? "";
      if (status && statuses[statuses.length - 1] !== status) statuses.push(status);
      if (!midShot && status === "TRAINING") {
        await shot(page, "l03-training");
        midShot = true;
      }
      if (["READY", "FAILED", "CANCELLED"].includes(status)) break;
      await sleep(150);
    }
    found.statuses = statuses;
    // 4b. the training job (SIMULATE runs on the mesh's worker): its WatchJob events drew
    // the steps and the loss chart; the call to action puts the cursor in the prompt
    await page.getByTestId("loss-chart").waitFor();
    found.jobSteps = await page.getByTestId("lora-job-steps").innerText();
    found.chartPoints = Number(await page.getByTestId("loss-chart").getAttribute("data-points"));
    await page.getByTestId("generate-cta").click();
    found.ctaFocus = await page.evaluate(() => document.activeElement?.getAttribute("data-testid") ?? "");
    found.simulatedBadge = await page.getByTestId("lora-simulated").count();
    found.referenceImages = await page.getByTestId("reference-image").count();
    await page.waitForFunction(
      () => [...document.querySelectorAll("[data-testid=reference-image] img")].every((i) => i.complete && i.naturalWidth > 0),
    );
    found.referenceThumbs = await decoded(page.locator("[data-testid=reference-image] img"));
    found.triggerShown = await page.getByTestId("lora-trigger-word").innerText();
    await shot(page, "l04-ready");
    step("trained");

    // 5. generate: the trigger word is put in, images appear as they land
    await page.getByTestId("gen-prompt").fill("a portrait in the rain");
    found.triggerHint = await page.getByTestId("gen-trigger-hint").innerText();
    await page.getByTestId("gen-outputs").selectOption("2");
    await page.getByTestId("gen-aspect").selectOption({ label: "16:9" });
    await page.getByTestId("gen-seed").fill("42");
    await page.getByTestId("gen-submit").click();
    await page.locator("[data-testid=gen-run][data-status=SUCCEEDED]").waitFor({ timeout: 60_000 });
    await page.waitForFunction(
      () => [...document.querySelectorAll("[data-testid=generated-image]")].filter((i) => i.complete && i.naturalWidth > 0).length === 2,
    );
    const sizes = await page
      .getByTestId("generated-image")
      .evaluateAll((els) => els.map((i) => [i.naturalWidth, i.naturalHeight]));
    found.generatedSizes = sizes;
    found.generatedUrls = await page.getByTestId("generated-image").evaluateAll((els) => els.map((i) => i.src));
    found.effectivePrompt = await page.getByTestId("gen-effective-prompt").innerText();
    await page.getByTestId("generation").first().waitFor();
    found.gallery = await page.getByTestId("generation").count();
    await shot(page, "l05-generated");
    step("generated");

    // 6. the list: the LoRA ready, marked simulated
    await page.getByTestId("back-to-loras").click();
    const row = page.locator(`[data-testid=lora][data-trigger="${TRIGGER}"][data-status=READY]`);
    await row.waitFor({ timeout: 10_000 });
    found.listStatus = await row.getAttribute("data-status");
    found.listSimulated = await row.getByTestId("lora-simulated").count();
    await shot(page, "l06-list");
    step("listed");
  },
  { failureShot: "l-failure" },
);
