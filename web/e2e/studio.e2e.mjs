// The training studio and administration end to end in Debian's headless Chromium
// (playwright-core drives the installed browser), against the real auth, storage and
// training services (simulate executor) behind the local gateway. Run by
// tests/web/test_studio_e2e.py; prints one JSON line of findings that the test asserts on.
//
// env: BASE_URL, USER_TOKEN, ADMIN_TOKEN, BAD_PATH, GOOD_PATH, NEW_USER, CHROMIUM, OUT
import { browse, collectCsp } from "./harness.mjs";

const { BASE_URL, USER_TOKEN, ADMIN_TOKEN, BAD_PATH, GOOD_PATH, NEW_USER } = process.env;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function signIn(page, token) {
  await page.goto(BASE_URL + "#/studio/datasets");
  await page.getByLabel("Статический токен").fill(token);
  await page.getByRole("button", { name: "Войти" }).click();
  await page.getByTestId("whoami").waitFor();
}

async function signOut(page) {
  await page.getByTestId("sign-out").click();
  await page.getByLabel("Статический токен").waitFor();
}

await browse(
  async (page, { found, step, shot }) => {
    // 1. a user: no administration (no link; the route is refused)
    await signIn(page, USER_TOKEN);
    await page.getByTestId("datasets-page").waitFor();
    found.userAdminLinks = await page.getByTestId("nav-admin").count();
    await page.evaluate(() => (window.location.hash = "#/admin"));
    await page.getByTestId("not-admin").waitFor();
    found.userAdminRefused = (await page.getByTestId("admin").count()) === 0;
    step("no-admin");

    // 2. a dataset with a broken line: the error by its line number
    await page.evaluate(() => (window.location.hash = "#/studio/datasets"));
    await page.getByTestId("dataset-input").setInputFiles(BAD_PATH);
    const broken = page.locator('[data-testid=dataset][data-name=broken][data-status="ERROR"]');
    await broken.waitFor({ timeout: 30_000 });
    found.errorLines = await broken.locator("[data-testid=dataset-error]").evaluateAll((els) => els.map((e) => e.dataset.line));
    found.errorText = await broken.locator("[data-testid=dataset-errors]").innerText();
    await shot(page, "s01-dataset-errors");
    step("dataset-errors");

    // 3. a good dataset: ready, with token statistics
    await page.getByTestId("dataset-input").setInputFiles(GOOD_PATH);
    const good = page.locator('[data-testid=dataset][data-name=support][data-status="READY"]');
    await good.waitFor({ timeout: 30_000 });
    const stats = await good.locator("[data-testid=dataset-stats] dd").allInnerTexts();
    found.stats = { examples: stats[0].replace(/\s/g, "") };
    await shot(page, "s02-datasets");
    step("dataset-ready");

    // 4. configure: 30 steps, the estimate first, then start
    await good.getByRole("link", { name: "Обучить" }).click();
    await page.getByTestId("train-page").waitFor();
    await page.getByTestId("hp-maxSteps").fill("30");
    await page.getByTestId("job-name").fill("support-bot");
    await page.getByTestId("estimate").click();
    await page.getByTestId("estimate-view").waitFor();
    found.estimatedSteps = (await page.getByTestId("est-steps").innerText()).replace(/\s/g, "");
    await shot(page, "s02-estimate");
    step("estimated");

    // 5. start and watch: the chart gains points as the job runs
    await page.getByTestId("start-job").click();
    await page.getByTestId("job-monitor").waitFor();
    const chartSizes = [];
    let status = "";
    const deadline = Date.now() + 60_000;
    let midShot = false;
    while (Date.now() < deadline) {
      status = (await page.getByTestId("job-monitor").getAttribute("data-status")) ?? "";
      const chart = page.getByTestId("loss-chart");
      const n = (await chart.count()) ? Number(await chart.getAttribute("data-points")) : 0;
      if (n > 0 && chartSizes[chartSizes.length - 1] !== n) chartSizes.push(n);
      if (status === "RUNNING" && !found.costWhileRunning) {
        const cost = (await page.getByTestId("job-cost").innerText()).trim();
        if (cost !== "—") found.costWhileRunning = cost; // WatchJob's live cost event
      }
      if (!midShot && n >= 8) {
        await shot(page, "s03-training");
        midShot = true;
      }
      if (["SUCCEEDED", "FAILED", "CANCELLED"].includes(status)) break;
      await sleep(100);
    }
    if (!midShot) await shot(page, "s03-training");
    found.chartSizes = chartSizes;
    found.finalStatus = status;
    found.finalPoints = Number(await page.getByTestId("loss-chart").getAttribute("data-points"));
    found.logLines = (await page.getByTestId("job-logs").innerText()).split("\n").filter(Boolean).length;
    found.finalCost = (await page.getByTestId("job-cost").innerText()).trim();
    await shot(page, "s04-job-done");
    step("trained-live");

    // 6. reopen: WatchJob replays from the first event
    await page.reload();
    await page.locator('[data-testid=job-monitor][data-status="SUCCEEDED"]').waitFor();
    await page.locator('[data-testid=loss-chart][data-points="30"]').waitFor({ timeout: 15_000 });
    found.replayedPoints = Number(await page.getByTestId("loss-chart").getAttribute("data-points"));
    step("replayed");

    // 7. models: the adapter, downloadable through signed URLs on this origin
    await page.getByTestId("tab-models").click();
    await page.getByTestId("model").first().waitFor();
    await page.getByTestId("model-download").first().click();
    const links = page.locator("[data-testid=download-links] a");
    await links.first().waitFor();
    found.downloadUrls = await links.evaluateAll((els) => els.map((a) => a.href));
    found.downloadLinks = found.downloadUrls.length;
    await shot(page, "s05-models");
    step("model-downloadable");

    // 8. the bell: the job's notification
    await page.getByTestId("unread").waitFor({ timeout: 15_000 });
    found.unread = await page.getByTestId("unread").innerText();
    await page.getByTestId("bell").click();
    await page.getByTestId("notification").first().waitFor();
    await shot(page, "s05-notifications");
    step("notified");
    await collectCsp(page, found);
    await signOut(page);

    // 9. the admin creates a user; the token is shown once
    await signIn(page, ADMIN_TOKEN);
    await page.getByTestId("nav-admin").click();
    await page.getByTestId("admin-users").waitFor();
    await page.getByTestId("new-username").fill(NEW_USER);
    await page.getByTestId("create-user").click();
    await page.getByTestId("new-token").waitFor();
    found.shownToken = await page.getByTestId("new-token").innerText();
    await page.locator(`[data-testid=user-row][data-username="${NEW_USER}"]`).waitFor();
    await shot(page, "s06-admin-users");
    step("admin-created-user");
    await collectCsp(page, found);
    await signOut(page);

    // 10. the new user signs in with it
    await signIn(page, found.shownToken);
    found.newUserWhoami = (await page.getByTestId("whoami").innerText()).trim();
    found.newUserAdminLinks = await page.getByTestId("nav-admin").count();
    step("new-user-signed-in");
  },
  { failureShot: "s-failure" },
);
