// First-load size of the built console: the files index.html pulls in (scripts, module
// preloads, stylesheets), gzipped as a server would send them. Exits 1 over the budget.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const BUDGET_KB = 350;
const html = readFileSync("dist/index.html", "utf8");
const refs = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+\.(?:js|css))"/g)].map((m) => m[1]);
let total = gzipSync(html).length;
for (const ref of new Set(refs)) {
  const size = gzipSync(readFileSync(`dist${ref}`), { level: 9 }).length;
  total += size;
  console.log(`${ref}  ${(size / 1024).toFixed(1)} KB gzipped`);
}
console.log(`first load: ${(total / 1024).toFixed(1)} KB gzipped (budget ${BUDGET_KB} KB)`);
process.exit(total > BUDGET_KB * 1024 ? 1 : 0);
