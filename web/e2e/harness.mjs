// What a browser script of tests/web shares: Debian's Chromium driven by playwright-core,
// a page that records console errors, CSP violations and any request with a token in its
// URL, screenshots into OUT, and one JSON line of findings printed at the end (the pytest
// side asserts on it; `error` says where the script stopped).
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

/** Moves the CSP violations the page saw so far into `found` (a reload starts a new list). */
export async function collectCsp(page, found) {
  found.cspViolations.push(...(await page.evaluate(() => window.__csp.splice(0))));
}

/** Runs `body(page, { found, step, shot })` in a fresh headless page. */
export async function browse(body, { viewport = { width: 1280, height: 900 }, failureShot = "failure" } = {}) {
  const { CHROMIUM, OUT } = process.env;
  mkdirSync(OUT, { recursive: true });
  const found = { steps: [], cspViolations: [], consoleErrors: [], requestsWithToken: [] };
  const step = (name) => found.steps.push(name);
  const shot = (page, name) => page.screenshot({ path: `${OUT}/${name}.png`, fullPage: true });
  let page = null;
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  try {
    const context = await browser.newContext({ viewport, locale: "ru-RU" });
    page = await context.newPage();
    page.setDefaultTimeout(30_000);
    page.on("console", (m) => m.type() === "error" && found.consoleErrors.push(m.text()));
    // Tokens never in a URL: every request the page makes is checked.
    page.on("request", (r) => {
      if (/avs_|avr_|eyJ/.test(r.url())) found.requestsWithToken.push(r.url());
    });
    await page.addInitScript(() => {
      window.__csp = [];
      document.addEventListener("securitypolicyviolation", (e) =>
        window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`),
      );
    });
    await body(page, { found, step, shot });
    await collectCsp(page, found);
  } catch (err) {
    found.error = String(err && err.stack ? err.stack : err);
    if (page) await shot(page, failureShot).catch(() => undefined);
  } finally {
    await browser.close();
    console.log(JSON.stringify(found));
  }
}
