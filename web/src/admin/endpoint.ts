/** Default port of the gateway's admin listener (GATEWAY_ADMIN_PORT). */
const ADMIN_PORT = 8081;

/**
 * Where the admin services answer. They are routed only by the gateway's admin listener
 * (a second origin, kept off public networks), so the console reads it from
 * `/console.json` ({"adminUrl": "…"}; a deployment replaces that file); empty means the
 * page's host on the admin listener's default port. That origin must allow the console's
 * in its CORS list (GATEWAY_CORS_ORIGINS) and be in GATEWAY_CSP_CONNECT_SRC.
 */
export async function adminBaseUrl(loc: Location = window.location): Promise<string> {
  let configured = "";
  try {
    const r = await fetch("/console.json", { cache: "no-store" });
    if (r.ok) {
      const body: unknown = await r.json();
      if (body !== null && typeof body === "object" && "adminUrl" in body && typeof body.adminUrl === "string") {
        configured = body.adminUrl;
      }
    }
  } catch {
    // no configuration: the default below
  }
  return configured.replace(/\/+$/, "") || `${loc.protocol}//${loc.hostname}:${ADMIN_PORT}`;
}
