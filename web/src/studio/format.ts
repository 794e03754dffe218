import type { CostSummary } from "../gen/aivera/training/v1/jobs_pb.js";

/** Short human figures for the studio's tables (locale-aware where it matters). */
export function bytes(n: bigint | number): string {
  let v = Number(n);
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v < 10 && i > 0 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function count(n: bigint | number, locale: string): string {
  return Number(n).toLocaleString(locale);
}

export function duration(seconds: bigint | number): string {
  const s = Math.max(0, Math.round(Number(seconds)));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${r}s` : `${r}s`;
}

export function money(micros: bigint | number, currency: string, locale: string): string {
  const value = Number(micros) / 1_000_000;
  try {
    return value.toLocaleString(locale, { style: "currency", currency: currency || "USD", maximumFractionDigits: 4 });
  } catch {
    return `${value.toFixed(4)} ${currency}`;
  }
}

/** What a job or a LOCAL generation cost, with its device time ("cpu 1m 15s"); null when
 *  nothing was billed (simulated, or paid to the provider). */
export function costText(cost: CostSummary | undefined, locale: string): string | null {
  if (!cost || cost.items.length === 0) return null;
  const devices = cost.items.map((i) => `${i.deviceType} ${duration(i.deviceSeconds)}`).join(", ");
  return `${money(cost.amountMicros, cost.currencyCode, locale)} (${devices})`;
}

export function loss(v: number | null | undefined): string {
  return v === null || v === undefined || Number.isNaN(v) ? "—" : v.toFixed(4);
}
