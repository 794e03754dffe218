// The console end to end in Debian's headless Chromium (playwright-core drives the
// installed browser; nothing is downloaded), against a real mesh behind the local gateway.
// tests/web/test_console_e2e.py starts the mesh, scripts the loopback Gemini server and
// runs this; it prints one JSON line of findings that the test asserts on.
//
// env: BASE_URL, STATIC_TOKEN, GEMINI_KEY, DOC_PATH, CHROMIUM, OUT (screenshots)
import { browse } from "./harness.mjs";

const { BASE_URL, STATIC_TOKEN, GEMINI_KEY, DOC_PATH } = process.env;
const QUESTION = process.env.QUESTION ?? "What do the drawings show?";
// A new chat, once the page shows it (its id in the location hash).
async function newChat(page) {
  const before = page.url();
  await page.getByTestId("new-chat").click();
  await page.waitForURL((u) => u.toString() !== before && u.hash.startsWith("#/chat/"));
  await page.locator("[data-testid=message]").first().waitFor({ state: "detached" });
}

await browse(
  async (page, { found, step, shot }) => {
    // 1. sign in
    await page.goto(BASE_URL);
    await page.getByLabel("Статический токен").fill(STATIC_TOKEN);
    await shot(page, "01-sign-in");
    await page.getByRole("button", { name: "Войти" }).click();
    await page.getByTestId("whoami").waitFor();
    found.storage = await page.evaluate(() => ({
      session: Object.entries(sessionStorage),
      local: Object.entries(localStorage),
    }));
    found.firstRefresh = await page.evaluate(() => sessionStorage.getItem("aivera.refresh"));
    step("signed-in");

    // 2. settings: the Gemini key is set through the page and never shown back
    await page.getByRole("button", { name: "Настройки" }).click();
    await page.getByTestId("key-input").fill(GEMINI_KEY);
    await page.getByTestId("key-save").click();
    await page.getByText(`Ключ задан: …${GEMINI_KEY.slice(-4)}`).waitFor();
    found.keyInputAfterSave = await page.getByTestId("key-input").inputValue();
    found.keyInPage = (await page.content()).includes(GEMINI_KEY);
    await shot(page, "02-settings");
    await page.getByRole("button", { name: "Закрыть" }).click();
    step("key-set");

    // 3. create and rename a chat
    await page.getByTestId("new-chat").click();
    await page.getByRole("button", { name: "Переименовать" }).click();
    await page.getByLabel("Новое название чата").fill("Чертежи АР");
    await page.getByRole("button", { name: "Сохранить" }).click();
    await page.locator(".chat.active .chat-title", { hasText: "Чертежи АР" }).waitFor();
    step("chat-created");

    // 4. attach a document: signed upload URL on this origin, then ingestion
    await page.getByTestId("attach-input").setInputFiles(DOC_PATH);
    await page.locator('[data-testid=attachment][data-status="READY"]').waitFor({ timeout: 60_000 });
    await shot(page, "03-attached");
    step("attached");

    // 5. stream an answer: record every change of the live text as it happens
    await page.evaluate(() => {
      window.__tokens = [];
      const seen = new Set();
      const obs = new MutationObserver(() => {
        const el = document.querySelector("[data-testid=live-text]");
        const text = el?.textContent ?? "";
        if (text && !seen.has(text)) {
          seen.add(text);
          window.__tokens.push({ t: performance.now(), len: text.length });
        }
      });
      obs.observe(document.body, { subtree: true, childList: true, characterData: true });
    });
    await page.getByTestId("composer").fill(QUESTION);
    await page.getByTestId("send").click();
    await page.getByTestId("live-turn").waitFor();
    await page.waitForFunction(() => window.__tokens.length >= 2);
    await shot(page, "04-streaming");
    await page.getByTestId("live-turn").waitFor({ state: "detached", timeout: 60_000 });
    const answer = page.locator("[data-testid=message][data-role=assistant]").last();
    found.answer = await answer.locator(".content").textContent();
    found.tokens = await page.evaluate(() => window.__tokens);
    // The answer is markdown: what it was drawn as (elements, not literal marks).
    found.markdown = await answer.locator(".content").evaluate((el) => ({
      strong: [...el.querySelectorAll("strong")].map((e) => e.textContent),
      items: [...el.querySelectorAll("ul > li")].map((e) => e.textContent),
      code: [...el.querySelectorAll("pre > code")].map((e) => e.textContent),
      cites: [...el.querySelectorAll("button[data-testid=cite]")].map((e) => e.dataset.marker),
      literalMarks: /\*\*|```/.test(el.textContent ?? ""),
    }));
    await shot(page, "04b-markdown");
    step("streamed");

    // 6. open a source: the page image with the block's box
    const sources = answer.getByTestId("source");
    found.sourceCount = await sources.count();
    if (found.sourceCount > 0) {
      await sources.first().click();
      const viewer = page.getByTestId("source-viewer");
      await viewer.getByTestId("page-image").waitFor();
      found.box = await viewer.getByTestId("source-box").count();
      const href = await viewer.locator("image").getAttribute("href");
      found.pageImageSameOrigin = new URL(href).origin === new URL(BASE_URL).origin;
      found.pageImage = await page.evaluate(async (u) => {
        const r = await fetch(u);
        return { status: r.status, type: r.headers.get("content-type"), bytes: (await r.arrayBuffer()).byteLength };
      }, href);
      await shot(page, "05-source");
      await viewer.getByTestId("close-source").click();
      step("source-opened");
    }

    // 6b. a citation marker `[1]` opens its source, from the keyboard too
    const cite = answer.getByTestId("cite").first();
    found.citeLabel = await cite.getAttribute("aria-label");
    await cite.focus();
    await page.keyboard.press("Enter");
    {
      const viewer = page.getByTestId("source-viewer");
      await viewer.getByTestId("page-image").waitFor();
      found.citeViewer = {
        title: await viewer.getAttribute("aria-label"),
        box: await viewer.getByTestId("source-box").count(),
      };
      await shot(page, "05b-cited-source");
      await viewer.getByTestId("close-source").click();
      await viewer.waitFor({ state: "detached" });
    }
    step("cited");

    // 7. a reload in the middle of an answer: the page follows the running turn again
    //    (WatchTurn) and shows it whole, nothing twice
    //    Each in a chat of its own: one model call per turn (with history a turn first
    //    asks the model to rewrite the question for the search).
    const assistants = page.locator("[data-testid=message][data-role=assistant]");
    await newChat(page);
    await page.getByTestId("composer").fill("Describe the ventilation system.");
    await page.getByTestId("send").click();
    await page.waitForFunction(() => (document.querySelector("[data-testid=live-text]")?.textContent ?? "").length > 0);
    await page.reload();
    await page.getByTestId("live-turn").waitFor();
    step("reattached");
    await page.getByTestId("live-turn").waitFor({ state: "detached", timeout: 60_000 });
    found.reattachedAnswer = await assistants.last().locator(".content").textContent();

    // 8. stop: CancelTurn ends the turn; the partial answer stays, marked as stopped
    await newChat(page);
    await page.getByTestId("composer").fill("Describe every sheet in detail.");
    await page.getByTestId("send").click();
    await page.waitForFunction(() => (document.querySelector("[data-testid=live-text]")?.textContent ?? "").length > 0);
    await page.getByTestId("stop").click();
    await page.getByTestId("live-turn").waitFor({ state: "detached", timeout: 30_000 });
    found.stoppedAnswer = await assistants.last().textContent();
    await shot(page, "06-stopped");
    step("stopped");

    // 9. a reload keeps the tab's session and the chat's history
    await page.reload();
    await page.getByTestId("whoami").waitFor();
    // The chat (in the location hash) and its history come back.
    await page.locator("[data-testid=message][data-role=assistant]").first().waitFor();
    found.historyAfterReload = await page.locator("[data-testid=message]").count();
    found.refreshRotated = (await page.evaluate(() => sessionStorage.getItem("aivera.refresh"))) !== found.firstRefresh;
    await shot(page, "07-after-reload");
    step("reloaded");

    // 10. English switch: the catalogue, and the services' errors in English (an empty
    //     title is refused with the status' LocalizedMessage in the caller's language)
    await page.getByLabel("Язык").selectOption("en");
    await page.getByRole("button", { name: "Rename" }).click();
    await page.getByLabel("New chat title").fill(" ");
    await page.getByRole("button", { name: "Save" }).click();
    found.englishError = await page.getByTestId("error").first().textContent();
    await shot(page, "08-english-error");
    await page.getByRole("button", { name: "Cancel" }).click();
    step("english");

    // 11. settings: the model profile is stored (the test reads it back over gRPC)
    await page.getByRole("button", { name: "Settings" }).click();
    // The radios are the stored setting: wait for it (checking before it loads is undone).
    await page.locator("input[name=profile]:checked").waitFor();
    await page.getByLabel("Complex (flash + pro)").check();
    await page.getByText("Saved").waitFor();
    await page.getByRole("button", { name: "Close" }).click();
    step("profile-set");

    // 12. sign out: the session is revoked and nothing is left in the tab
    found.lastRefresh = await page.evaluate(() => sessionStorage.getItem("aivera.refresh"));
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("button", { name: "Sign in" }).waitFor();
    found.afterSignOut = await page.evaluate(() => Object.entries(sessionStorage));
    await shot(page, "09-signed-out");
    step("signed-out");
  },
  { viewport: { width: 1280, height: 860 }, failureShot: "failure" },
);
