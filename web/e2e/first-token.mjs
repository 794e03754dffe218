// `make bench` (bench/bench_web.py): time from Send to the first token on the page, in
// Debian's headless Chromium against a running mesh. Signs in, prints {"ready": true},
// then runs one round per line read on stdin (so the bench interleaves the browser's
// rounds with its baseline's, and machine load drifts alike for both) and prints
// {"ms": …} for each: a new chat (no history, one model call), the clock in the page from
// the Send click to the first text of the answer.
//
// env: BASE_URL, STATIC_TOKEN, CHROMIUM
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const { BASE_URL, STATIC_TOKEN, CHROMIUM } = process.env;
const say = (obj) => console.log(JSON.stringify(obj));
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox", "--disable-gpu"] });
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(30_000);
  await page.goto(BASE_URL);
  await page.getByLabel("Статический токен").fill(STATIC_TOKEN);
  await page.getByRole("button", { name: "Войти" }).click();
  await page.getByTestId("whoami").waitFor();
  say({ ready: true });
  let i = 0;
  for await (const _ of createInterface({ input: process.stdin })) {
    i += 1;
    const before = page.url();
    await page.getByTestId("new-chat").click();
    await page.waitForURL((u) => u.toString() !== before && u.hash.startsWith("#/chat/"));
    // The new chat's own loads (GetChat, ListMessages, ListChats) finish first: the figure
    // is the send path, as the baseline's is.
    await page.locator(".chat-head h2", { hasText: "Новый чат" }).waitFor();
    await page.waitForTimeout(200);
    await page.getByTestId("composer").fill(`Question ${i}`);
    await page.evaluate(() => {
      window.__first = new Promise((resolve) => {
        const button = document.querySelector("[data-testid=send]");
        let start = 0;
        button.addEventListener("click", () => (start = performance.now()), { capture: true, once: true });
        const obs = new MutationObserver(() => {
          const text = document.querySelector("[data-testid=live-text]")?.textContent ?? "";
          if (start && text) {
            obs.disconnect();
            resolve(performance.now() - start);
          }
        });
        obs.observe(document.body, { subtree: true, childList: true, characterData: true });
      });
    });
    await page.getByTestId("send").click();
    const ms = await page.evaluate(() => window.__first);
    await page.getByTestId("live-turn").waitFor({ state: "detached" });
    say({ ms });
  }
} catch (err) {
  say({ error: String(err?.stack ?? err) });
} finally {
  await browser.close();
}
